"""nbwoq_torch on CUDA tensors: the array-API reference path on the GPU itself.

Run with ``python -m pytest tests/torch/test_cuda.py`` on a machine with a GPU; without
one every test is skipped. Nothing may be copied to the CPU behind the caller's back:
``Tensor.cpu`` and ``Tensor.numpy`` are made to fail during each call, results must
stay on the GPU in the caller's own storage (same object, same ``data_ptr``), and they
must equal, bit for bit, what the Numba kernels give on the CPU for the same values
(the CPU results are themselves held to the golden vectors by test_golden_torch.py).

``NBWOQ_TEST_DEVICE=cpu`` runs this module on CPU tensors with the reference path
forced, to check the module itself where no GPU is at hand.
"""

import contextlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nbwoq_torch  # noqa: E402
from golden_cases import case_id, cases, inputs, invoke  # noqa: E402
from nbwoq_torch import _interop  # noqa: E402

_DRY_RUN = os.environ.get("NBWOQ_TEST_DEVICE") == "cpu"
if not _DRY_RUN and not torch.cuda.is_available():
    pytest.skip("no CUDA device (NBWOQ_TEST_DEVICE=cpu runs this module on the CPU reference path)",
                allow_module_level=True)

DEVICE = torch.device("cpu") if _DRY_RUN else torch.device("cuda")
DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def on_device():
    """The call under test: no CPU copies allowed (and, in a dry run, the reference path)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was copied to the CPU")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "cpu", refuse)
        mp.setattr(torch.Tensor, "numpy", refuse)
        if _DRY_RUN:
            with _interop.reference_path():
                yield
        else:
            yield


def _on_cpu(t):
    return None if t is None else t.detach().to("cpu")


def _to_device(a):
    """A golden NumPy array as a tensor on DEVICE, in the dtype the reference held it."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).to(DEVICE)
    return torch.from_numpy(a.copy()).to(DEVICE)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _assert_same(got_device, got_cpu):
    got_device, got_cpu = _as_tuple(got_device), _as_tuple(got_cpu)
    assert len(got_device) == len(got_cpu)
    for d, c in zip(got_device, got_cpu):
        if c is None:
            assert d is None
            continue
        if isinstance(c, tuple):
            _assert_same(d, c)
            continue
        assert isinstance(d, torch.Tensor) and d.device.type == DEVICE.type, "result left the device"
        assert d.dtype == c.dtype
        np.testing.assert_array_equal(_on_cpu(d).to(torch.float32).numpy(), c.to(torch.float32).numpy())


def _both(func, weight_cpu, **kwargs):
    """``func`` on a DEVICE copy (checked: in place, same object, nothing copied to the
    CPU) and on a CPU copy through the Numba kernels; returns both results."""
    w = weight_cpu.clone().to(DEVICE)
    ptr = w.data_ptr()
    device_kwargs = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with on_device():
        got = func(w, **device_kwargs)
    first = _as_tuple(got)[0]
    assert first is w and w.data_ptr() == ptr and w.device.type == DEVICE.type
    expected = func(weight_cpu.clone(), **kwargs)
    return got, expected


def _weight(shape, dtype, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("scheme", ["asym", "sym"])
@pytest.mark.parametrize("group_size", [32, 48, -1], ids=["g32", "g48-tail", "g-1"])
@pytest.mark.parametrize("return_int", [False, True], ids=["fake", "int"])
def test_quant_tensor_int_on_device_equals_the_cpu_kernels(return_int, group_size, scheme, dtype):
    _assert_same(*_both(nbwoq_torch.quant_tensor, _weight((33, 200), DTYPES[dtype]), bits=4, group_size=group_size,
                        scheme=scheme, return_int=return_int))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("codebook", ["nf4", "fp4", "fp4_e2m1"])
@pytest.mark.parametrize("return_int", [False, True], ids=["fake", "int"])
def test_codebooks_on_device_equal_the_cpu_kernels(return_int, codebook, dtype):
    w = _weight((17, 100), DTYPES[dtype], seed=1)
    _assert_same(*_both(nbwoq_torch.quant_tensor, w, group_size=32, dtype=codebook, return_int=return_int))
    _assert_same(*_both(nbwoq_torch.quantize_4bit, w, dtype=codebook, return_int=return_int))


@pytest.mark.parametrize("func", ["qdq_weight_asym", "qdq_weight_sym", "qdq_weight_actor"])
def test_rowwise_functions_on_device(func):
    kwargs = dict(bits=3, return_int=True)
    if func == "qdq_weight_actor":
        kwargs["scheme"] = "sym"
    _assert_same(*_both(getattr(nbwoq_torch, func), _weight((9, 70), torch.bfloat16, seed=2), **kwargs))


@pytest.mark.parametrize("dtype", ["int", "nf4"])
def test_quant_weight_w_scale_on_device(dtype):
    w = _weight((16, 96), torch.float32, seed=3)
    _, scale, zp = nbwoq_torch.quant_tensor(w.clone(), bits=4, group_size=32, dtype=dtype, return_int=True)
    _assert_same(*_both(nbwoq_torch.quant_weight_w_scale, w, scale=scale, zp=zp, group_size=32, dtype=dtype,
                        bits=4))


def test_double_quant_on_device():
    w = _weight((64, 256), torch.float32, seed=4)
    _assert_same(*_both(nbwoq_torch.quant_tensor, w, bits=4, group_size=32, double_quant=True,
                        double_quant_dtype="int", double_quant_bits=8, double_quant_scheme="sym",
                        double_quant_group_size=256))


GOLDEN_FILES = ["quant_tensor_int.npz", "quant_tensor_float4.npz", "quant_tensor_halfprec.npz"]
GOLDEN = [(fname, case) for fname in GOLDEN_FILES for case in cases(fname)]


def _cpu_tensor(a):
    return _to_device(a).to("cpu")


@pytest.mark.parametrize("fname,case", GOLDEN, ids=[case_id(c) for _, c in GOLDEN])
def test_golden_cases_on_device(fname, case):
    """Every quant_tensor golden case (int, codebooks, half precision): the device gives
    exactly the CPU kernels' result, or the same refusal with the weight untouched."""
    try:
        expected, _ = invoke(nbwoq_torch.quant_tensor, fname, case, _cpu_tensor)
    except (TypeError, ValueError) as exc:
        source = _to_device(inputs(fname, case)["weight"])
        with on_device(), pytest.raises(type(exc)):
            invoke(nbwoq_torch.quant_tensor, fname, case, lambda a: source)
        np.testing.assert_array_equal(_on_cpu(source).to(torch.float32).numpy(),
                                      inputs(fname, case)["weight"].astype(np.float32))
        return
    with on_device():
        result, tensors = invoke(nbwoq_torch.quant_tensor, fname, case, _to_device)
    assert _as_tuple(result)[0] is tensors["weight"]
    _assert_same(result, expected)


def test_search_clip_on_a_device_module():
    m = torch.nn.Linear(256, 64)
    expected = nbwoq_torch.search_clip(m, bits=4, group_size=32)
    m = m.to(DEVICE)
    before, ptr = m.weight.detach().clone(), m.weight.data_ptr()
    with on_device():
        ratio = nbwoq_torch.search_clip(m, bits=4, group_size=32)
        per_group = nbwoq_torch.search_clip(m, bits=4, group_size=32, per_group=True)
    assert type(ratio) is float and ratio == expected  # loss sums may differ in order; small weights agree
    assert per_group.device.type == DEVICE.type and tuple(per_group.shape) == (64, 8)
    assert torch.equal(m.weight, before) and m.weight.data_ptr() == ptr


def test_weighted_search_clip_on_a_device_module():
    """weighting="magnitude" on the reference path picks what the CPU kernel picks."""
    m = torch.nn.Linear(256, 64)
    with torch.no_grad():
        m.weight[3, 17] = 2.0  # an outlier the plain error would clip
    cpu = nbwoq_torch.search_clip(m, bits=4, group_size=32, weighting="magnitude")
    cpu_groups = nbwoq_torch.search_clip(m, bits=4, group_size=32, per_group=True, weighting="magnitude")
    m = m.to(DEVICE)
    with on_device():
        ratio = nbwoq_torch.search_clip(m, bits=4, group_size=32, weighting="magnitude")
        groups = nbwoq_torch.search_clip(m, bits=4, group_size=32, per_group=True, weighting="magnitude")
    assert ratio == cpu
    # per-group picks may differ only at near-ties: the weighted errors are equal to float32 precision
    assert (groups.cpu() == cpu_groups).float().mean() > 0.99


def test_non_contiguous_device_weight_is_written_through_its_strides():
    base = _weight((64, 48), torch.float32, seed=5)
    w_dev = base.clone().to(DEVICE).t()
    ptr = w_dev.data_ptr()
    with on_device():
        assert nbwoq_torch.quant_tensor(w_dev, bits=4, group_size=32) is w_dev
    assert w_dev.data_ptr() == ptr
    expected = nbwoq_torch.quant_tensor(base.t().contiguous(), bits=4, group_size=32)
    np.testing.assert_array_equal(_on_cpu(w_dev).numpy(), expected.numpy())


def test_parameter_requiring_grad_on_device():
    layer = torch.nn.Linear(64, 16).to(DEVICE)
    p = layer.weight
    with on_device():
        assert nbwoq_torch.quant_tensor(p, bits=4, group_size=32) is p
    assert p.requires_grad and p.grad_fn is None


def test_non_finite_device_weight_is_refused_untouched():
    w = _weight((8, 64), torch.bfloat16).to(DEVICE)
    w[5, 3] = float("nan")
    before = w.clone()
    with on_device(), pytest.raises(ValueError, match="row 5"):
        nbwoq_torch.quant_tensor(w, group_size=32)
    assert torch.equal(w.view(torch.int16), before.view(torch.int16))


@pytest.mark.skipif(_DRY_RUN, reason="needs a second device")
def test_arguments_on_another_device_are_refused():
    w = _weight((8, 64), torch.float32).to(DEVICE)
    before = w.clone()
    with pytest.raises(ValueError, match="device"):
        nbwoq_torch.quant_tensor(w, group_size=32, quantile=torch.ones(8, 2))  # quantile on the CPU
    assert torch.equal(w, before)
