"""The absorption plan on real architectures, built offline from tiny transformers configs.

For each family the plan comes three ways: from the Hugging Face state-dict names
(``nbwoq.absorb_plan``), from the GGUF names nbwoq's converter gives those tensors, and
from the model's traced graph (``nbwoq_torch.absorb_plan``, which starts from the seed's
``get_absorb_layers`` walk); they must agree. Then every group's fold, with a random
positive scale, must leave the model's logits as they were (float32 rounding only),
while a fold done wrongly (a Gemma norm folded as a plain multiplier, an ``o_proj``
column scale not tied across the query heads that share a value head) must not.
"""

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nbwoq  # noqa: E402
import nbwoq_torch  # noqa: E402
from nbwoq import AbsorbGroup, fold_column_scale  # noqa: E402
from nbwoq_torch import get_absorb_layers  # noqa: E402
from tiny_causal_lm import MODELS, build  # noqa: E402

FAMILIES = [m for m in MODELS if "-" not in m]


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return request.param, build(request.param)


def _ids():
    return torch.tensor([[1, 5, 9, 100, 7, 3, 42, 127, 17]])


def _logits(model):
    with torch.no_grad():
        return model(_ids()).logits


def _head_counts(config):
    return dict(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _names_plan(model):
    return nbwoq.absorb_plan(model.state_dict().keys(), model.config.model_type, **_head_counts(model.config))


def test_the_plan_from_names_covers_every_block_linear(model):
    name, m = model
    plan = _names_plan(m)
    layers = m.config.num_hidden_layers
    assert len(plan.groups) == 4 * layers and plan.row_only == ()
    gemma = name.startswith("gemma")
    assert {g.absorb for g in plan.groups} == {"rows", "norm_plus_one" if gemma else "norm"}
    vo = plan.group_of("model.layers.0.self_attn.o_proj.weight")
    repeat = m.config.num_attention_heads // m.config.num_key_value_heads
    assert (vo.repeat, vo.block) == ((repeat, _head_counts(m.config)["head_dim"]) if repeat > 1 else (1, 0))
    if name == "qwen2":
        assert vo.feeder_bias == "model.layers.0.self_attn.v_proj.bias"


@pytest.mark.parametrize("backend", ["torchscript", "export"])
def test_the_plan_from_the_graph_agrees(model, backend):
    _, m = model
    graph_plan = nbwoq_torch.absorb_plan(m, _ids(), backend=backend)
    names_plan = _names_plan(m)
    assert graph_plan.groups == names_plan.groups
    assert graph_plan.row_only == ("lm_head.weight",)


def test_the_graph_plan_starts_from_get_absorb_layers(model):
    name, m = model
    absorb_to_layer, _ = get_absorb_layers(m, _ids())
    plan = nbwoq_torch.absorb_plan(m, _ids())
    by_feeder = {g.feeder: g for g in plan.groups}
    for absorber, layers in absorb_to_layer.items():
        assert by_feeder[f"{absorber}.weight"].consumers == tuple(sorted(f"{n}.weight" for n in layers))
    # The seed's walk pairs the Llama-like norms only; Gemma's 1 + weight norms, the
    # gated product and attention are the plan's own.
    assert len(absorb_to_layer) == (0 if name.startswith("gemma") else 2 * m.config.num_hidden_layers)


def test_auto_falls_back_to_export_when_torchscript_cannot_trace():
    m = build("llama")
    m.config.use_cache = True  # the output then holds a DynamicCache, which torch.jit.trace refuses
    plan = nbwoq_torch.absorb_plan(m, _ids())
    # torch.export traces it; the cache it returns holds v_proj's output, so v_proj's
    # rows cannot take o_proj's scale (the cache would change): only that pair is left out.
    expected = [g for g in _names_plan(m).groups if g.repeat == 1 or not g.feeder.endswith("v_proj.weight")]
    assert list(plan.groups) == [g for g in expected if not g.consumers[0].endswith("o_proj.weight")]
    assert plan.row_only == ("lm_head.weight",) + tuple(f"model.layers.{i}.self_attn.o_proj.weight" for i in range(2))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_plan_from_gguf_names_agrees(name):
    gguf = pytest.importorskip("gguf")
    from nbwoq.formats import hf_to_gguf
    from nbwoq.formats.errors import InputError

    m = build(name)
    config = m.config.to_dict()
    conversion = hf_to_gguf.CONVERSIONS[config["model_type"]](types.SimpleNamespace(config=config), gguf)
    to_gguf = {}
    for hf_name, tensor in m.state_dict().items():
        try:
            to_gguf[hf_name] = conversion.out_name(types.SimpleNamespace(name=hf_name, shape=tuple(tensor.shape)))
        except InputError:  # Gemma 2 ties the output to the embedding: no GGUF name for lm_head
            assert hf_name == "lm_head.weight"
    to_hf = {g: h for h, g in to_gguf.items()}
    gguf_plan = nbwoq.absorb_plan(to_gguf.values(), conversion.arch, **_head_counts(m.config))
    assert {n.split(".")[0] for g in gguf_plan.groups for n in (g.feeder, *g.consumers)} == {"blk"}
    back = [g._replace(feeder=to_hf[g.feeder], consumers=tuple(sorted(to_hf[c] for c in g.consumers)),
                       feeder_bias=to_hf.get(g.feeder_bias))
            for g in gguf_plan.groups]
    # GGUF stores Gemma's norms plus 1 (llama.cpp multiplies by the weight itself).
    expected = [g._replace(absorb="norm") if g.absorb == "norm_plus_one" else g for g in _names_plan(m).groups]
    assert sorted(back) == sorted(expected)


def _fold(model, plan, rng, wrong=None):
    """The model with every group of ``plan`` folded with a random positive scale."""
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for group in plan.groups:
        channels = state[group.feeder].shape[0]
        scale = np.exp(rng.uniform(-0.7, 0.7, channels))
        if wrong == "plain norm" and group.absorb == "norm_plus_one":
            group = group._replace(absorb="norm")
        bias = state[group.feeder_bias] if group.feeder_bias else None
        feeder, consumers, bias = fold_column_scale(group, scale, state[group.feeder],
                                                    [state[c] for c in group.consumers], bias)
        if wrong == "untied" and group.repeat > 1:
            # o_proj's columns scaled per query head, as if each head had its own v rows.
            consumers = [c * np.exp(rng.uniform(-0.7, 0.7, c.shape[1])).astype(c.dtype) for c in consumers]
        state[group.feeder] = feeder
        state.update(zip(group.consumers, consumers))
        if bias is not None:
            state[group.feeder_bias] = bias
    fused = type(model)(model.config).eval()
    fused.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return fused


def test_the_fused_model_computes_the_same_logits(model):
    _, m = model
    plan = nbwoq_torch.absorb_plan(m, _ids())
    fused = _fold(m, plan, np.random.default_rng(0))
    changed = [g.feeder for g in plan.groups if not torch.equal(fused.state_dict()[g.feeder], m.state_dict()[g.feeder])]
    assert len(changed) == len(plan.groups)
    torch.testing.assert_close(_logits(fused), _logits(m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, wrong", [("gemma2", "plain norm"), ("gemma3", "plain norm"), ("llama", "untied"),
                                         ("llama-mqa", "untied")])
def test_a_wrong_fold_changes_the_logits(name, wrong):
    m = build(name)
    fused = _fold(m, _names_plan(m), np.random.default_rng(0), wrong=wrong)
    assert (_logits(fused) - _logits(m)).abs().max() > 1e-2


def test_a_model_without_a_partner_is_all_row_only():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4)).eval()
    plan = nbwoq_torch.absorb_plan(model, torch.randn(2, 8))
    assert plan.groups == () and plan.row_only == ("0.weight", "2.weight")


def test_a_gated_product_with_another_consumer_is_not_folded():
    class Gated(torch.nn.Module):
        def __init__(self, leak):
            super().__init__()
            self.gate, self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
            self.leak = leak

        def forward(self, x):
            up = self.up(x)
            out = self.down(torch.nn.functional.silu(self.gate(x)) * up)
            return out + up.sum(-1, keepdim=True) if self.leak else out

    plan = nbwoq_torch.absorb_plan(Gated(False).eval(), torch.randn(2, 8))
    assert plan.groups == (AbsorbGroup("up.weight", "rows", ("down.weight",), "up.bias"),)
    plan = nbwoq_torch.absorb_plan(Gated(True).eval(), torch.randn(2, 8))
    assert plan.groups == ()


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        nbwoq_torch.absorb_plan(object(), torch.randn(2, 8))
    with pytest.raises(ValueError, match="backend"):
        nbwoq_torch.absorb_plan(torch.nn.Linear(8, 8), torch.randn(2, 8), backend="fx")
