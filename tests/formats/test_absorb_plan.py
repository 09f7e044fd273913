"""The absorption plan from tensor names (``nbwoq.formats.absorb_plan``), without torch.

The expected groups are written out from the families' forward code: which norm feeds
q/k/v and which feeds gate/up (Gemma 2/3: ``pre_feedforward_layernorm``; its
``post_attention_layernorm`` normalizes the attention's output before the residual add),
how each norm multiplies (Hugging Face Gemma: ``1 + weight``; every GGUF norm: ``weight``).
tests/torch/test_absorb_plan.py checks the same plans on real models: against the plan
from the traced graph, and by the fused model's logits.
"""

import pytest

from nbwoq import AbsorbGroup, absorb_plan
from nbwoq.formats.absorb_plan import FAMILIES

HF_BLOCK = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
            "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
GEMMA_EXTRA = ["post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
               "post_feedforward_layernorm.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight"]
GGUF_BLOCK = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
              "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
OUTSIDE = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]


def _hf_names(family, layers=2, bias=False):
    block = list(HF_BLOCK)
    block += GEMMA_EXTRA if family.startswith("gemma") else ["post_attention_layernorm.weight"]
    if bias:
        block += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    return OUTSIDE + [f"model.layers.{i}.{n}" for i in range(layers) for n in block]


def _hf_groups(i, kind, norm2, repeat=1, block=0, bias=False, with_vo=True):
    p = f"model.layers.{i}."
    groups = [
        AbsorbGroup(p + "input_layernorm.weight", kind,
                    (p + "self_attn.k_proj.weight", p + "self_attn.q_proj.weight", p + "self_attn.v_proj.weight")),
        AbsorbGroup(p + "mlp.up_proj.weight", "rows", (p + "mlp.down_proj.weight",)),
        AbsorbGroup(p + f"{norm2}.weight", kind, (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")),
    ]
    if with_vo:
        groups.append(AbsorbGroup(p + "self_attn.v_proj.weight", "rows", (p + "self_attn.o_proj.weight",),
                                  p + "self_attn.v_proj.bias" if bias else None, repeat, block))
    return groups


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_llama_like_families(family):
    plan = absorb_plan(_hf_names(family), family, heads=8, kv_heads=2, head_dim=16)
    expected = _hf_groups(0, "norm", "post_attention_layernorm", 4, 16) + \
        _hf_groups(1, "norm", "post_attention_layernorm", 4, 16)
    assert list(plan.groups) == expected
    assert plan.row_only == ()


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "gemma3_text"])
def test_gemma_norms_multiply_by_one_plus_weight(family):
    plan = absorb_plan(_hf_names(family), family, heads=4, kv_heads=4)
    expected = _hf_groups(0, "norm_plus_one", "pre_feedforward_layernorm") + \
        _hf_groups(1, "norm_plus_one", "pre_feedforward_layernorm")
    assert list(plan.groups) == expected
    feeders = {g.feeder for g in plan.groups}
    for i in range(2):
        for name in ("post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm",
                     "self_attn.k_norm"):
            assert f"model.layers.{i}.{name}.weight" not in feeders


def test_without_head_counts_o_proj_is_row_only():
    plan = absorb_plan(_hf_names("llama", layers=1), "llama")
    assert list(plan.groups) == _hf_groups(0, "norm", "post_attention_layernorm", with_vo=False)
    assert plan.row_only == ("model.layers.0.self_attn.o_proj.weight",)


@pytest.mark.parametrize("heads, kv_heads, head_dim, repeat, block", [
    (4, None, None, 1, 0), (4, 4, 64, 1, 0), (4, 1, 32, 4, 32), (12, 4, 8, 3, 8)])
def test_grouped_query_attention_ties_o_proj_columns(heads, kv_heads, head_dim, repeat, block):
    plan = absorb_plan(_hf_names("llama", layers=1), "llama", heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    vo = plan.group_of("model.layers.0.self_attn.o_proj.weight")
    assert (vo.feeder, vo.absorb, vo.repeat, vo.block) == ("model.layers.0.self_attn.v_proj.weight", "rows",
                                                           repeat, block)


def test_qwen2_v_bias_takes_the_scale():
    plan = absorb_plan(_hf_names("qwen2", layers=1, bias=True), "qwen2", heads=4, kv_heads=2, head_dim=8)
    assert list(plan.groups) == _hf_groups(0, "norm", "post_attention_layernorm", 2, 8, bias=True)


def test_a_missing_consumer_drops_the_group():
    names = [n for n in _hf_names("llama", layers=2) if n != "model.layers.1.self_attn.k_proj.weight"]
    plan = absorb_plan(names, "llama", heads=4)
    assert "model.layers.1.input_layernorm.weight" not in {g.feeder for g in plan.groups}
    assert "model.layers.0.input_layernorm.weight" in {g.feeder for g in plan.groups}
    # q and v lose their column scale; v still feeds o_proj's.
    assert plan.row_only == ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight")
    assert plan.group_of("model.layers.1.self_attn.o_proj.weight").feeder == "model.layers.1.self_attn.v_proj.weight"


def test_any_prefix_before_layers():
    names = [f"model.language_model.layers.0.{n}" for n in HF_BLOCK + ["post_attention_layernorm.weight"]]
    plan = absorb_plan(names, "llama", heads=2)
    assert len(plan.groups) == 4 and plan.row_only == ()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_gguf_names(family):
    names = ["token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_v.bias"]
    names += [f"blk.{i}.{n}" for i in range(2) for n in GGUF_BLOCK]
    if family.startswith("gemma"):
        names += [f"blk.{i}.{n}" for i in range(2) for n in ("post_attention_norm.weight", "post_ffw_norm.weight")]
    plan = absorb_plan(names, family, heads=4, kv_heads=2, head_dim=8)
    p = "blk.0."
    assert list(plan.groups[:4]) == [
        AbsorbGroup(p + "attn_norm.weight", "norm", (p + "attn_k.weight", p + "attn_q.weight", p + "attn_v.weight")),
        AbsorbGroup(p + "attn_v.weight", "rows", (p + "attn_output.weight",), p + "attn_v.bias", 2, 8),
        AbsorbGroup(p + "ffn_norm.weight", "norm", (p + "ffn_gate.weight", p + "ffn_up.weight")),
        AbsorbGroup(p + "ffn_up.weight", "rows", (p + "ffn_down.weight",)),
    ]
    assert len(plan.groups) == 8 and plan.row_only == ()
    assert plan.groups[5].feeder_bias is None  # blk.1 has no attn_v.bias


def test_naming_can_be_forced():
    names = [f"blk.0.{n}" for n in GGUF_BLOCK]
    assert absorb_plan(names, "llama", naming="hf").groups == ()
    assert len(absorb_plan(names, "llama", naming="gguf").groups) == 3


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(family="falcon"), ValueError, "family must be one of"),
    (dict(family=None), TypeError, "family must be a string"),
    (dict(names=["a", 3]), TypeError, "names must be strings"),
    (dict(heads=4, kv_heads=3), ValueError, "multiple of kv_heads"),
    (dict(heads=0), ValueError, "positive multiple"),
    (dict(heads=4.0), TypeError, "heads must be an integer"),
    (dict(heads=4, kv_heads=2), ValueError, "head_dim is needed"),
    (dict(heads=4, kv_heads=2, head_dim=0), ValueError, "head_dim must be a positive"),
    (dict(kv_heads=2), ValueError, "need heads"),
    (dict(naming="onnx"), ValueError, "naming must be"),
])
def test_bad_arguments_raise(kwargs, error, message):
    args = {"names": _hf_names("llama", layers=1), "family": "llama", **kwargs}
    with pytest.raises(error, match=message):
        absorb_plan(args.pop("names"), args.pop("family"), **args)


def test_every_family_is_listed_with_a_known_norm():
    assert set(FAMILIES) == {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text"}
    assert {kind for _, kind in FAMILIES.values()} == {"norm", "norm_plus_one"}
