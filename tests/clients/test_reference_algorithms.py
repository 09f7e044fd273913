"""Issue 18: the reference's own RTN, AWQ, TEQ and GPTQ, run unchanged on nbwoq_torch.

Each case quantizes a small offline model (random weights, fixed seed) with the reference's
``prepare``/``convert`` twice: as installed, and inside ``nbwoq_torch.patch_reference()``.
Every tensor of the quantized model (packed codes, scales, zero points, and the rest) must
be identical. The one opt-in difference, ``patch_reference(absorb_backend="auto")`` (AWQ then
finds absorb layers the reference cannot), is stated and tested below.

Runs only when ``neural-compressor-pt`` is installed (``pip install -e ".[clients]"``).
"""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("neural_compressor.torch.quantization", reason="neural-compressor-pt is not installed")

import nbwoq_torch  # noqa: E402
import _runs  # noqa: E402  (tests/clients is on sys.path: pytest's rootdir-relative import)

RTN_VARIANTS = ("rtn", "rtn-sym8", "rtn-clip", "rtn-nf4", "rtn-fp4", "rtn-double-quant")
# Every algorithm on Llama; the cheap ones on GPT-J and OPT too (CI time).
CASES = (
    [(arch, algorithm) for arch in _runs.ARCHITECTURES for algorithm in RTN_VARIANTS]
    + [("llama", "gptq"), ("gptj", "gptq"), ("opt", "gptq-actorder"), ("llama", "gptq-actorder"), ("gpt2", "gptq")]
    + [("llama", "teq"), ("opt", "teq"), ("gptj", "teq")]
)


@pytest.fixture(scope="module")
def models():
    models = {arch: _runs.build_model(arch) for arch in _runs.ARCHITECTURES}
    # GPT-2's Conv1D layers: the reference's GPTQ hands the MLP's output layer a transposed
    # scale, which only broadcasts (wrongly, and nbwoq does the same) when that layer's rows
    # form one group; with more groups the reference itself fails.
    models["gpt2"] = _runs.build_model("gpt2", intermediate=32)
    return models


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch, algorithm", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_same_path_same_quantized_model(models, arch, algorithm):
    reference = _runs.quantized_state(_runs.quantize(models[arch], algorithm, arch, substitute=False))
    ours = _runs.quantized_state(_runs.quantize(models[arch], algorithm, arch, substitute=True))
    assert _runs.differing(reference, ours) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", ["llama", "gptj"])
def test_awq_same_model_by_default_absorb_pairs_only_when_asked(models, arch, monkeypatch):
    """AWQ is the reference's, tensor for tensor, by default: nbwoq's absorb search takes the
    reference's path (TorchScript), which on transformers 5.x fails as the reference's does, so
    AWQ finds no absorb pairs and keeps every layer as a MulLinear carrying its own
    ``input_scale``. With ``absorb_backend="auto"`` the search falls back to torch.export and
    finds the pairs; the model is then exactly the reference's AWQ given those pairs."""
    from neural_compressor.torch.algorithms.weight_only import awq

    model = models[arch]
    example = _runs.calibration_batches(vocab=model.config.vocab_size)[0]
    reference_pairs, _ = _runs.reference_absorb_layers(model, arch)
    reference = _runs.quantized_state(_runs.quantize(model, "awq", arch, substitute=False))
    ours = _runs.quantized_state(_runs.quantize(model, "awq", arch, substitute=True))
    assert _runs.differing(reference, ours) == []

    found = nbwoq_torch.get_absorb_layers(model, example, backend="auto")
    with_pairs = _runs.quantized_state(_runs.quantize(model, "awq", arch, substitute=True, absorb_backend="auto"))
    if reference_pairs == found[0]:  # a transformers version the reference can trace
        assert _runs.differing(reference, with_pairs) == []
        return
    assert reference_pairs == {} and found[0], (reference_pairs, found)
    absorbed = [layer for layers in found[0].values() for layer in layers]
    assert all(f"{layer}.input_scale" in reference for layer in absorbed)
    assert not any(f"{layer}.input_scale" in with_pairs for layer in absorbed)
    # The reference's own AWQ (unsubstituted), handed the pairs nbwoq found.
    monkeypatch.setattr(awq, "get_absorb_layers", lambda *args, **kwargs: copy.deepcopy(found))
    given_pairs = _runs.quantized_state(_runs.quantize(model, "awq", arch, substitute=False))
    assert _runs.differing(given_pairs, with_pairs) == []


def test_patch_reference_substitutes_and_restores():
    import sys

    from neural_compressor.torch.algorithms.weight_only import awq, rtn, utility

    original = sys.modules[utility.__name__]
    before = (rtn.quant_tensor, awq.get_absorb_layers)
    with nbwoq_torch.patch_reference() as substitute:
        assert sys.modules[utility.__name__] is substitute
        assert rtn.quant_tensor is nbwoq_torch.quant_tensor
        assert awq.get_absorb_layers is substitute.get_absorb_layers  # TorchScript unless told
        # A function-level import, as GPTQ does: it gets nbwoq's.
        from neural_compressor.torch.algorithms.weight_only.utility import quant_weight_w_scale

        assert quant_weight_w_scale is nbwoq_torch.quant_weight_w_scale
        # Names the seed does not have stay the reference's.
        assert substitute.cast_fp8 is original.cast_fp8
        with pytest.raises(RuntimeError, match="already patched"):
            with nbwoq_torch.patch_reference():
                pass
    assert sys.modules[utility.__name__] is original
    assert (rtn.quant_tensor, awq.get_absorb_layers) == before


@pytest.mark.parametrize("fp8_aware", [False, True], ids=["plain", "fp8"])
@pytest.mark.parametrize("zp", [True, False], ids=["asym", "sym"])
@pytest.mark.parametrize("group_size", [-1, 8, 12], ids=["g-1", "g8", "g12-tail"])
@pytest.mark.parametrize("dtype", ["int", "nf4"])
def test_quant_weight_w_scale_in_gptqs_call_form_matches_the_reference(fp8_aware, zp, group_size, dtype):
    """The reference 3.10's own function, called as its GPTQ calls it; on the tail case the
    reference's codes are compared where it computes them (all columns)."""
    from neural_compressor.torch.algorithms.weight_only import utility

    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 32, generator=generator)
    n_groups = 1 if group_size == -1 else -(-32 // group_size)
    scale = torch.rand(6, n_groups, generator=generator) / 8 + 0.05
    scale = scale * 1000 if fp8_aware else scale  # values were divided by the fp8 scale
    zero = torch.full((6, n_groups), 8.0) if (zp and dtype == "int") else None
    s8 = torch.tensor([0.002])
    expected = utility.quant_weight_w_scale(weight.clone(), scale, s8, zero, group_size, dtype=dtype,
                                            fp8_aware=fp8_aware)
    ours = nbwoq_torch.quant_weight_w_scale(weight.clone(), scale, s8, zero, group_size, dtype=dtype,
                                            fp8_aware=fp8_aware)
    assert torch.equal(ours, expected)


# scale shapes GPTQ's Conv1D path (a transposed scale) and torch broadcasting make the
# reference accept: (weight shape, group_size, scale shape, zp shape or None)
_BROADCAST_CASES = [
    ((4, 24), 8, (1, 4), (1, 4)),  # GPTQ's transposed (rows, 1) ... as (1, rows), 3 groups
    ((4, 24), 8, (1, 3), None),  # one row for every row
    ((4, 24), 10, (4, 5), (4, 5)),  # extra columns; the short last group takes the last one
    ((4, 24), 32, (1, 4), None),  # one short group: scale[:, -1]
    ((4, 24), -1, (1, 24), (1, 24)),  # per column
    ((4, 24), -1, (1, 1), None),  # per tensor
    ((4, 4), -1, (1, 4), None),  # the transposed per-row scale of a square layer
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", ["int", "nf4"])
@pytest.mark.parametrize("shape, group_size, scale_shape, zp_shape", _BROADCAST_CASES)
def test_quant_weight_w_scale_broadcasts_as_the_reference(shape, group_size, scale_shape, zp_shape, dtype):
    from neural_compressor.torch.algorithms.weight_only import utility

    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(*shape, generator=generator)
    scale = torch.rand(*scale_shape, generator=generator) / 4 + 0.05
    zp = torch.randint(0, 15, zp_shape, generator=generator).float() if zp_shape and dtype == "int" else None
    expected = utility.quant_weight_w_scale(weight.clone(), scale, None, zp, group_size, dtype=dtype)
    ours = nbwoq_torch.quant_weight_w_scale(weight.clone(), scale, None, zp, group_size, dtype=dtype)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("group_size, scale_shape", [(8, (2, 3)), (8, (4, 2)), (-1, (4, 2)), (8, (12,))])
def test_quant_weight_w_scale_refuses_what_the_reference_cannot_broadcast(group_size, scale_shape):
    from neural_compressor.torch.algorithms.weight_only import utility

    weight, scale = torch.randn(4, 24), torch.rand(*scale_shape) + 0.1
    with pytest.raises((RuntimeError, IndexError)):
        utility.quant_weight_w_scale(weight.clone(), scale, None, None, group_size)
    with pytest.raises(ValueError, match="scale"):
        nbwoq_torch.quant_weight_w_scale(weight.clone(), scale, None, None, group_size)
