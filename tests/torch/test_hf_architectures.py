"""The module utilities on real Hugging Face architectures, built offline from tiny configs.

Every expected absorb map below is worked out from SPEC's rules and the
architecture's forward code (comments say how), not read off nbwoq's output.
The rules, in short: a layer's absorber is the op producing its input, walking
up through relu / leaky_relu / hardtanh / to; it must be a norm, linear, conv
or mul whose every consumer (ignoring size) can take the scale, and its module
must be able to take the scale into its weight.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nbwoq_torch import capture_block_inputs, get_module_input_output, recover_forward, replace_forward  # noqa: E402
from nbwoq_torch._graph import get_absorb_layers  # noqa: E402
from nbwoq_torch._modules import fetch_module, get_block_prefix  # noqa: E402

N_LAYERS = 2
BACKENDS = ["torchscript", "export"]


def _decoder_config(config_class, **extra):
    return config_class(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **extra,
    )


def build(arch, use_cache=False):
    """A tiny randomly initialised model, in eval mode."""
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(_decoder_config(transformers.LlamaConfig, use_cache=use_cache))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(_decoder_config(transformers.Qwen2Config, use_cache=use_cache))
    elif arch == "gemma3":
        config = _decoder_config(transformers.Gemma3TextConfig, head_dim=8, sliding_window=4, use_cache=use_cache)
        model = transformers.Gemma3ForCausalLM(config)
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=64, use_cache=use_cache
        )
        model = transformers.GPT2LMHeadModel(config)
    elif arch == "bert":
        config = transformers.BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        model = transformers.BertModel(config)
    else:
        raise ValueError(arch)
    return model.eval()


def batch(arch, padded=False):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 8), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if arch == "bert":
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


# name of the block list, and the module names in one block
BLOCKS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gemma3": "model.layers",
    "gpt2": "transformer.h",
    "bert": "encoder.layer",
}


def _llama_like_map():
    """Llama and Qwen2: pre-norm decoder blocks with ``weight * x``-RMSNorms.

    - input_layernorm ends in ``weight * hidden`` (an aten::mul of the norm
      module) and feeds only q/k/v: it absorbs for them. Qwen2RMSNorm is not in
      the reference's class table but passes the weight-scaling check.
    - post_attention_layernorm likewise feeds only gate/up.
    - o_proj's input is the attention output reshaped: no absorber.
    - down_proj's input is act(gate) * up, a mul of the MLP module, which has
      no weight to take a scale: rejected, so no absorber.
    - lm_head's input is ``hidden[:, slice]`` (logits_to_keep), a slice: no
      absorber.
    """
    absorb = {}
    no_absorb = ["lm_head"]
    for i in range(N_LAYERS):
        p = f"model.layers.{i}"
        absorb[f"{p}.input_layernorm"] = [f"{p}.self_attn.{x}_proj" for x in "qkv"]
        absorb[f"{p}.post_attention_layernorm"] = [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"]
        no_absorb += [f"{p}.self_attn.o_proj", f"{p}.mlp.down_proj"]
    return absorb, no_absorb


def _gpt2_map():
    """GPT-2 with ``supported_layers=["Linear", "Conv1D"]``.

    - ln_1 feeds only c_attn (through c_attn's own flattening view): absorbs.
    - ln_2 feeds only mlp.c_fc: absorbs.
    - attn.c_proj's input is the merged heads: no absorber.
    - mlp.c_proj's input is gelu_new, which ends in a mul of the activation
      module; it has no weight: rejected.
    - lm_head's input is ln_f's output reshaped and sliced: no absorber.
    """
    absorb = {}
    no_absorb = ["lm_head"]
    for i in range(N_LAYERS):
        p = f"transformer.h.{i}"
        absorb[f"{p}.ln_1"] = [f"{p}.attn.c_attn"]
        absorb[f"{p}.ln_2"] = [f"{p}.mlp.c_fc"]
        no_absorb += [f"{p}.attn.c_proj", f"{p}.mlp.c_proj"]
    return absorb, no_absorb


def _bert_map():
    """BERT, post-norm: every LayerNorm's output also feeds the next residual add.

    - embeddings.LayerNorm feeds query/key/value and the add in
      attention.output: cannot absorb. attention.output.LayerNorm feeds
      intermediate.dense and the add in output: cannot absorb.
    - attention.output.dense (merged heads), output.dense (gelu), pooler.dense
      (a select of the first token) have no absorbable parent either.
    So nothing absorbs, and every Linear is listed.
    """
    no_absorb = ["pooler.dense"]
    for i in range(N_LAYERS):
        p = f"encoder.layer.{i}"
        no_absorb += [f"{p}.attention.self.{x}" for x in ("query", "key", "value")]
        no_absorb += [f"{p}.attention.output.dense", f"{p}.intermediate.dense", f"{p}.output.dense"]
    return {}, no_absorb


def _gemma3_map():
    """Gemma3: its RMSNorm computes ``norm(x) * (1 + weight)`` and casts back.

    A scale divided into ``weight`` does not divide the output, so no norm may
    absorb (TorchScript stops at the final type_as; either way the
    weight-scaling check rejects Gemma3RMSNorm). down_proj is fed by the MLP's
    gate mul, without a weight. lm_head is behind a slice. Nothing absorbs.
    """
    no_absorb = ["lm_head"]
    for i in range(N_LAYERS):
        p = f"model.layers.{i}"
        no_absorb += [f"{p}.self_attn.{x}_proj" for x in "qkvo"]
        no_absorb += [f"{p}.mlp.{x}_proj" for x in ("gate", "up", "down")]
    return {}, no_absorb


EXPECTED = {
    "llama": (["Linear"], _llama_like_map),
    "qwen2": (["Linear"], _llama_like_map),
    "gpt2": (["Linear", "Conv1D"], _gpt2_map),
    "bert": (["Linear"], _bert_map),
    "gemma3": (["Linear"], _gemma3_map),
}
ARCHS = list(EXPECTED)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, build(request.param)


def test_block_prefix(arch_model):
    arch, model = arch_model
    assert get_block_prefix(model) == (BLOCKS[arch], N_LAYERS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absorb_map(arch_model, backend):
    arch, model = arch_model
    supported_layers, expected = EXPECTED[arch]
    expected_absorb, expected_no_absorb = expected()
    absorb_to_layer, no_absorb_layers = get_absorb_layers(model, batch(arch)["input_ids"], supported_layers, backend=backend)
    assert list(absorb_to_layer.items()) == list(expected_absorb.items())
    assert sorted(no_absorb_layers) == sorted(expected_no_absorb)
    assert len(no_absorb_layers) == len(set(no_absorb_layers))


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_absorb_map_from_keyword_inputs(arch):
    # A dict example is traced as keyword arguments, padding mask included.
    model = build(arch)
    supported_layers, expected = EXPECTED[arch]
    for backend in BACKENDS:
        result = get_absorb_layers(model, batch(arch, padded=True), supported_layers, backend=backend)
        assert result[0] == expected()[0], backend
        assert sorted(result[1]) == sorted(expected()[1]), backend


def test_gpt2_without_conv1d_sees_only_lm_head():
    # The reference's rules on GPT-2: Conv1D layers trace as addmm and are not
    # layers of any supported type; lm_head is behind a view and a slice.
    model = build("gpt2")
    assert get_absorb_layers(model, batch("gpt2")["input_ids"]) == ({}, ["lm_head"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_torchscript_failure_falls_back_to_export(arch, caplog):
    # With the cache on, the output holds a DynamicCache that torch.jit.trace
    # rejects; torch.export (outputs reduced to their tensors) still works.
    model = build(arch, use_cache=True)
    supported_layers, expected = EXPECTED[arch]
    ids = batch(arch)["input_ids"]
    every_layer = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")]
    assert get_absorb_layers(model, ids, supported_layers, backend="torchscript") == ({}, every_layer)
    assert "DynamicCache" in caplog.text
    absorb_to_layer, no_absorb_layers = get_absorb_layers(model, ids, supported_layers)
    assert absorb_to_layer == expected()[0]
    assert sorted(no_absorb_layers) == sorted(expected()[1])


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def test_captured_block_inputs_replay_exactly(arch_model):
    arch, model = arch_model
    inputs = batch(arch, padded=True)
    block_name = f"{BLOCKS[arch]}.0"
    block = fetch_module(model, block_name)
    with torch.no_grad():
        reference = get_module_input_output(model, {block_name: ["input", "output"]}, dataloader=[inputs])
        with capture_block_inputs(model) as captured:
            assert model(**inputs) is None
        assert len(captured) == 1
        ((args, kwargs),) = list(captured)
        # The hidden states reach the block as its first positional argument.
        assert torch.equal(args[0], reference[block_name]["input"][0])
        assert args[0].shape == (2, 8, 32)
        replayed = _first(block(*args, **kwargs))
    assert torch.equal(replayed, reference[block_name]["output"][0])
    assert "total_block_args" not in model.__dict__ and "forward" not in model.__dict__


def test_replace_forward_on_llama_keeps_kwargs():
    model = build("llama")
    inputs = batch("llama", padded=True)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
        replace_forward(model)
        model(**inputs)
        model(**inputs)
        recover_forward(model)
        logits = model(**inputs).logits
    assert torch.equal(logits, expected_logits)
    assert len(model.total_block_args) == 2
    kwargs = model.total_block_kwargs[0]
    # Llama blocks get the rotary embeddings and the (padded) attention mask as keywords.
    cos, sin = kwargs["position_embeddings"]
    assert cos.shape[-2:] == (8, 8) and sin.shape == cos.shape
    assert kwargs["attention_mask"].shape[-2:] == (8, 8)


# One producer -> consumer edge per architecture, read off its forward code.
DATA_FLOW = {
    "llama": ("model.layers.0.input_layernorm", "model.layers.0.self_attn.v_proj"),
    "qwen2": ("model.layers.1.post_attention_layernorm", "model.layers.1.mlp.up_proj"),
    "gpt2": ("transformer.h.0.ln_2", "transformer.h.0.mlp.c_fc"),
    "bert": ("encoder.layer.0.attention.output.LayerNorm", "encoder.layer.0.intermediate.dense"),
    "gemma3": ("model.layers.0.pre_feedforward_layernorm", "model.layers.0.mlp.gate_proj"),
}


def test_module_io_matches_the_data_flow(arch_model):
    # What the hooks record must agree with the model's wiring: the input of
    # the consumer is, call by call, the very output of the producer.
    arch, model = arch_model
    producer, consumer = DATA_FLOW[arch]
    config = {producer: ["output"], consumer: ["input", "output"]}
    loader = [batch(arch), batch(arch, padded=True)]
    with torch.no_grad():
        record = get_module_input_output(model, config, dataloader=loader)
    assert list(record) == [producer, consumer]
    assert len(record[producer]["output"]) == len(record[consumer]["input"]) == 2
    for produced, consumed in zip(record[producer]["output"], record[consumer]["input"]):
        assert produced.shape == (2, 8, 32)
        assert torch.equal(produced, consumed)
    assert all(not module._forward_hooks for module in model.modules())
