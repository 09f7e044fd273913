"""quantize_model: every linear layer fake-quantized in place by the core, with a report.

Each layer is checked against the core function on a NumPy copy of its original weight
(bit for bit), and the report's errors against the weighted error written out here.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nbwoq  # noqa: E402
from nbwoq_torch import quantize_model  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")


class Tiny(torch.nn.Module):
    def __init__(self, tied=False):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 96)
        self.block = torch.nn.Sequential(torch.nn.Linear(96, 160), torch.nn.ReLU(), torch.nn.Linear(160, 96, bias=False))
        self.lm_head = torch.nn.Linear(96, 32, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(self.block(self.embed(ids)))


def _model(dtype=torch.float32, tied=False, seed=0):
    torch.manual_seed(seed)
    model = Tiny(tied)
    with torch.no_grad():
        model.block[0].weight.mul_(torch.rand(model.block[0].weight.shape) * 4)  # some larger values
    return model.to(dtype)


def _numpy(t):
    t = t.detach()
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _weighted(x, y, size):
    """The relative importance-weighted error, one group at a time."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    err = norm = 0.0
    for g0 in range(0, x.shape[1], size):
        seg, approx = x[:, g0:g0 + size], y[:, g0:g0 + size]
        w = np.sqrt((seg ** 2).mean(axis=1, keepdims=True)) + np.abs(seg)
        err += (w * (seg - approx) ** 2).sum()
        norm += (w * seg ** 2).sum()
    return err / norm


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SETTINGS = {"int4-asym-g128": dict(bits=4, group_size=128, scheme="asym"),
            "int4-sym-g32": dict(bits=4, group_size=32, scheme="sym"),
            "int3-symfull-g64": dict(bits=3, group_size=64, scheme="sym", full_range=True),
            "int8-asym-row": dict(bits=8, group_size=-1, scheme="asym")}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_rtn_is_quant_tensor_on_each_weight(dtype, setting):
    model = _model(DTYPES[dtype])
    before = _weights(model)
    kw = SETTINGS[setting]
    report = quantize_model(model, method="rtn", **kw)
    assert [r["name"] for r in report] == ["block.0", "block.2"]
    size = kw["group_size"] if kw["group_size"] > 0 else 10**9
    for r in report:
        name = f"{r['name']}.weight"
        expected = nbwoq.quant_tensor(_numpy(before[name]).copy(), **kw)
        np.testing.assert_array_equal(_numpy(dict(model.named_parameters())[name]), expected)
        assert r["method"] == "rtn" and r["shape"] == tuple(before[name].shape)
        assert r["error"] == r["rtn_error"]
        assert r["error"] == pytest.approx(_weighted(_numpy(before[name]), expected, size), rel=1e-9)
    # The output layer and the embedding are left in float.
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])
    assert torch.equal(model.embed.weight, before["embed.weight"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("setting", ["int4-asym-g128", "int4-sym-g32", "int3-symfull-g64"])
def test_refit_is_refit_int_and_never_worse_than_rtn(dtype, setting):
    model = _model(DTYPES[dtype])
    before = _weights(model)
    kw = SETTINGS[setting]
    report = quantize_model(model, method="refit", **kw)
    for r in report:
        name = f"{r['name']}.weight"
        original = _numpy(before[name])
        expected = nbwoq.refit_int(original.copy(), **kw, return_int=False)
        np.testing.assert_array_equal(_numpy(dict(model.named_parameters())[name]), expected)
        rtn = nbwoq.quant_tensor(original.copy(), **kw)
        assert r["rtn_error"] == pytest.approx(_weighted(original, rtn, kw["group_size"]), rel=1e-9)
        assert r["error"] == pytest.approx(_weighted(original, expected, kw["group_size"]), rel=1e-9)
        assert r["error"] <= r["rtn_error"] and r["method"] == "refit"
    assert sum(r["error"] for r in report) < sum(r["rtn_error"] for r in report)


def test_clip_is_the_per_group_search_then_quant_tensor():
    model = _model()
    before = _weights(model)
    report = quantize_model(model, method="clip", bits=4, group_size=32, scheme="asym")
    for r in report:
        name = f"{r['name']}.weight"
        original = _numpy(before[name])
        quantile = nbwoq.search_clip(original, bits=4, group_size=32, scheme="asym", per_group=True,
                                     weighting="magnitude")
        expected = nbwoq.quant_tensor(original.copy(), bits=4, group_size=32, scheme="asym", quantile=quantile)
        np.testing.assert_array_equal(_numpy(dict(model.named_parameters())[name]), expected)
        assert r["error"] <= r["rtn_error"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_hqq_is_refine_zero(dtype, monkeypatch):
    # from round-to-nearest's grid refine_zero rarely moves a zero point, so equal values
    # alone would not show that it ran: count its calls on the weights
    from nbwoq import hqq

    calls = []
    core = hqq.refine_zero
    monkeypatch.setattr(hqq, "refine_zero", lambda w, *a, **k: calls.append(w.shape) or core(w, *a, **k))
    model = _model(DTYPES[dtype])
    before = _weights(model)
    report = quantize_model(model, method="hqq", bits=4, group_size=32, scheme="asym")
    assert calls[1:] == [tuple(before[f"{r['name']}.weight"].shape) for r in report]  # calls[0]: the probe
    for r in report:
        name = f"{r['name']}.weight"
        expected = nbwoq.refine_zero(_numpy(before[name]).copy(), bits=4, group_size=32, return_int=False)
        np.testing.assert_array_equal(_numpy(dict(model.named_parameters())[name]), expected)
        assert r["method"] == "hqq"


def test_refit_options_reach_the_core():
    model = _model()
    before = _weights(model)["block.0.weight"].numpy()
    quantize_model(model, method="refit", weighting=None, iterations=1)
    expected = nbwoq.refit_int(before.copy(), bits=4, group_size=128, weighting=None, iterations=1, return_int=False)
    np.testing.assert_array_equal(model.block[0].weight.detach().numpy(), expected)


def test_quant_lm_head_unties_a_shared_embedding():
    model = _model(tied=True)
    before = _weights(model)  # named_parameters lists the shared tensor once, as embed.weight
    report = quantize_model(model, quant_lm_head=True)
    assert [r["name"] for r in report] == ["block.0", "block.2", "lm_head"]
    assert model.lm_head.weight is not model.embed.weight
    assert torch.equal(model.embed.weight, before["embed.weight"])
    expected = nbwoq.quant_tensor(before["embed.weight"].numpy().copy(), bits=4, group_size=128)
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(), expected)


def test_a_weight_shared_by_two_layers_is_quantized_once():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    model[1].weight = model[0].weight
    before = model[0].weight.detach().numpy().copy()
    report = quantize_model(model, group_size=32)
    assert [r["name"] for r in report] == ["0"]
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), nbwoq.quant_tensor(before, group_size=32))


def test_a_real_architecture():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    head = model.lm_head.weight.detach().clone()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        float_logits = model(ids).logits
    report = quantize_model(model, method="refit", group_size=32)
    assert len(report) == 7 * 2 and all(r["error"] <= r["rtn_error"] for r in report)
    assert torch.equal(model.lm_head.weight, head)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, float_logits)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(method="gptq"), ValueError, "method must be one of"),
    (dict(method=None), TypeError, "method must be one of"),
    (dict(bits=0), ValueError, "bits must be from 1"),
    (dict(bits=17), ValueError, "bits must be at most 16"),
    (dict(bits=4.0), TypeError, "bits must be an integer"),
    (dict(group_size=0), ValueError, "group_size"),
    (dict(scheme="nf4"), ValueError, "scheme"),
    (dict(scheme="sym", full_range=True, bits=1), ValueError, "full_range"),
    (dict(weighting="hessian"), ValueError, "weighting"),
    (dict(iterations=-1), ValueError, "iterations"),
    (dict(quant_lm_head="yes"), TypeError, "quant_lm_head"),
    (dict(method="refit", full_range="no"), TypeError, "full_range"),
    (dict(method="clip", group_size=-2), ValueError, "group_size"),
    (dict(method="hqq", scheme="sym"), ValueError, "scheme='sym' has none"),
    (dict(method="hqq", full_range="no"), TypeError, "full_range"),
])
def test_bad_arguments_change_nothing(kwargs, error, message):
    model = _model()
    before = _weights(model)
    with pytest.raises(error, match=message):
        quantize_model(model, **kwargs)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_bad_weight_anywhere_changes_nothing():
    model = _model()
    with torch.no_grad():
        model.block[2].weight[3, 5] = float("nan")
    before = _weights(model)
    with pytest.raises(ValueError, match="layer 'block.2': weight holds NaN or Inf"):
        quantize_model(model)
    assert all(torch.equal(p, before[n]) or n == "block.2.weight" for n, p in model.named_parameters())
    assert torch.equal(model.block[0].weight, before["block.0.weight"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize_model(np.zeros((4, 4)))
