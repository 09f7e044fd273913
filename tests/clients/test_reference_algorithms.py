"""Issue 18: the reference's own RTN, AWQ, TEQ and GPTQ, run unchanged on nbwoq_torch.

Each case quantizes a small offline model (random weights, fixed seed) with the reference's
``prepare``/``convert`` twice: as installed, and inside ``nbwoq_torch.patch_reference()``.
Where the algorithm takes the same path both ways, every tensor of the quantized model
(packed codes, scales, zero points, and the rest) must be identical. The one place it does
not is stated and tested below (AWQ, when nbwoq finds absorb layers the reference cannot).

Runs only when ``neural-compressor-pt`` is installed (``pip install -e ".[clients]"``).
"""

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
    + [("llama", "gptq"), ("gptj", "gptq"), ("opt", "gptq-actorder"), ("llama", "gptq-actorder")]
    + [("llama", "teq"), ("opt", "teq"), ("gptj", "teq")]
)


@pytest.fixture(scope="module")
def models():
    return {arch: _runs.build_model(arch) for arch in _runs.ARCHITECTURES}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch, algorithm", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_same_path_same_quantized_model(models, arch, algorithm):
    reference = _runs.quantized_state(_runs.quantize(models[arch], algorithm, arch, substitute=False))
    ours = _runs.quantized_state(_runs.quantize(models[arch], algorithm, arch, substitute=True))
    assert _runs.differing(reference, ours) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", ["llama"])
def test_awq_differs_only_where_nbwoq_finds_absorb_layers(models, arch):
    """On transformers 5.x the reference's TorchScript trace fails, so its AWQ gets no absorb
    pairs and only searches clip ratios; nbwoq's get_absorb_layers falls back to torch.export,
    finds the pairs, and AWQ folds those layers' scales into the layer before them; the
    reference keeps every layer as a MulLinear carrying its own ``input_scale``. With nbwoq's
    search held to TorchScript (the reference's path), the models are identical."""
    model = models[arch]
    reference_pairs, _ = _runs.reference_absorb_layers(model, arch)
    our_pairs, _ = nbwoq_torch.get_absorb_layers(model, _runs.calibration_batches(vocab=model.config.vocab_size)[0])
    reference = _runs.quantized_state(_runs.quantize(model, "awq", arch, substitute=False))
    ours = _runs.quantized_state(_runs.quantize(model, "awq", arch, substitute=True))
    if reference_pairs == our_pairs:  # a transformers version the reference can trace
        assert _runs.differing(reference, ours) == []
    else:
        assert reference_pairs == {} and our_pairs, (reference_pairs, our_pairs)
        absorbed = [layer for layers in our_pairs.values() for layer in layers]
        assert all(f"{layer}.input_scale" in reference for layer in absorbed)
        assert not any(f"{layer}.input_scale" in ours for layer in absorbed)
    same_path = _runs.quantized_state(
        _runs.quantize(model, "awq", arch, substitute=True, patches=_runs.torchscript_only())
    )
    assert _runs.differing(reference, same_path) == []


def test_patch_reference_substitutes_and_restores():
    import sys

    from neural_compressor.torch.algorithms.weight_only import awq, rtn, utility

    original = sys.modules[utility.__name__]
    before = (rtn.quant_tensor, awq.get_absorb_layers)
    with nbwoq_torch.patch_reference() as substitute:
        assert sys.modules[utility.__name__] is substitute
        assert rtn.quant_tensor is nbwoq_torch.quant_tensor
        assert awq.get_absorb_layers is nbwoq_torch.get_absorb_layers
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
