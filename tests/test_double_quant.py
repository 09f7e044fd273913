"""quant_tensor(..., double_quant=True): golden cases on both paths, SPEC deviation 3,
the torch-order scale mean, properties and refused arguments."""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nbwoq
from naive import torch_order_sum as _torch_sum_loop
from golden_cases import as_tuple, assert_rounded_once, case_id, cases, inputs, invoke, returned
from nbwoq import _double_quant

DQ = "quant_tensor_double_quant.npz"
EDGE = "errors_and_edge_calls.npz"
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _variant(case):
    return case["notes"].split(": ")[-1]


def _dividing(case):
    rows, cols = case["tensor_args"]["weight"]["shape"]
    g = case["args"]["group_size"]
    return g == -1 or g >= cols or cols % g == 0


def _check(path, case, expected_case=None):
    """Call as the reference was called; compare with ``expected_case``'s golden result."""
    expected_case = expected_case or case
    result, tensors = invoke(nbwoq.quant_tensor, DQ, case, path.to_array)
    got = as_tuple(result)
    expected = returned(DQ, expected_case)
    assert got[0] is tensors["weight"]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            np.testing.assert_array_equal(path.to_numpy(g), e)


_EXACT = cases(DQ, lambda c: c["error"] is None
               and (not c["args"]["double_quant"] or ("double_quant_scheme" in c["args"] and _dividing(c))))


@pytest.mark.parametrize("case", _EXACT, ids=case_id)
def test_golden_exact(path, case):
    """The scheme passed explicitly (or double_quant=False with the keywords present):
    the reference's result bit for bit, the scale mean included."""
    _check(path, case)


_NO_DQ = "double_quant=False with RTN-style dq kwargs present"


def _sibling(case, variant, **overrides):
    """The case of ``variant`` on the same input with the same quantization arguments
    (but ``overrides``), or None."""
    want = {k: case["args"][k] for k in ("bits", "group_size", "scheme", "quantile", "dtype", "return_int",
                                         "full_range")}
    want.update(overrides)
    for c in cases(DQ):
        if (c["input_label"] == case["input_label"] and _variant(c) == variant
                and all(c["args"][k] == v for k, v in want.items())):
            return c
    return None


_DEFAULTS = cases(DQ, lambda c: _variant(c) == "defaults_no_dq_kwargs" and _dividing(c))


@pytest.mark.parametrize("case", _DEFAULTS, ids=case_id)
def test_golden_defaults_add_the_mean_back(path, case):
    """SPEC deviation 3: without ``double_quant_scheme`` the reference subtracts the scale
    mean and never adds it back. nbwoq adds it back, so the result is the golden result
    of the same call with the defaults spelled out (int, 8 bits, "asym", group 256) where
    the file has one; else the golden codes and scales of the call without double
    quantization, double-quantized with the mean added back."""
    twin = _sibling(case, "asym_8bit_g256")
    if twin is not None:
        assert {k: twin["args"][k] for k in twin["args"] if k.startswith("double_quant")} == {
            "double_quant": True, "double_quant_dtype": "int", "double_quant_bits": 8,
            "double_quant_scheme": "asym", "double_quant_group_size": 256}
        _check(path, case, expected_case=twin)
        return
    a = case["args"]
    plain = _sibling(case, _NO_DQ, return_int=True)
    codes, scale, zp = returned(DQ, plain)
    expected_scale = _expected_scales(scale, {})
    result, tensors = invoke(nbwoq.quant_tensor, DQ, case, path.to_array)
    got = as_tuple(result)
    assert got[0] is tensors["weight"]
    if a["return_int"]:
        np.testing.assert_array_equal(path.to_numpy(got[0]), codes)
        np.testing.assert_array_equal(path.to_numpy(got[1]), expected_scale)
        assert (got[2] is None) == (zp is None)
        return
    cols = codes.shape[1]
    size = cols if a["group_size"] == -1 else a["group_size"]
    stored = codes if a["dtype"] == "int" else _levels(codes, a["dtype"])
    np.testing.assert_array_equal(path.to_numpy(got[0]), _dequantize(stored, zp, expected_scale, size))


def _levels(codes, dtype):
    lut = np.zeros(16, np.float32)  # code + 8 -> level
    lut[np.asarray(nbwoq.INT_MAPPING[dtype]) + 8] = nbwoq.FLOAT_MAPPING[dtype]
    return lut[codes.astype(np.int64) + 8]


def _expected_scales(scale, args):
    """The double-quantized scales, from the public quant_tensor and the mean helper."""
    flat = scale.reshape(1, -1).copy()
    mean = None
    if args.get("double_quant_scheme", "asym") == "asym":
        mean = _double_quant.scale_mean(flat[0], np)
        flat = flat - mean
    nbwoq.quant_tensor(flat, bits=args.get("double_quant_bits", 8), scheme="sym",
                       group_size=args.get("double_quant_group_size", 256), dtype=args.get("double_quant_dtype", "int"))
    return (flat if mean is None else flat + mean).reshape(scale.shape)


def _dequantize(stored, zp, scale, group_size):
    g = np.repeat(np.arange(scale.shape[1]), group_size)[: stored.shape[1]]
    return (stored - (0 if zp is None else zp[:, g])) * scale[:, g]


_NON_DIVIDING = cases(DQ, lambda c: c["error"] is None and c["args"]["double_quant"] and not _dividing(c))


@pytest.mark.parametrize("case", _NON_DIVIDING, ids=case_id)
def test_golden_non_dividing_groups_are_double_quantized(path, case):
    """SPEC deviation 3: the reference skips double quantization when the group size does
    not divide the row and returns its (codes, scale, zp) even with return_int=False.
    nbwoq double-quantizes those scales too (tail group included): the weight's codes
    are the reference's, the scales are the reference's scales double-quantized, and
    return_int=False returns the dequantized weight."""
    a = case["args"]
    stored, scale, zp = returned(DQ, case)  # codes (levels for a codebook w/o return_int)
    expected_scale = _expected_scales(scale, a)
    if a.get("double_quant_return_int") and not a["return_int"]:
        with pytest.raises(ValueError, match="needs return_int=True"):
            invoke(nbwoq.quant_tensor, DQ, case, path.to_array)
        return
    result, tensors = invoke(nbwoq.quant_tensor, DQ, case, path.to_array)
    got = as_tuple(result)
    assert got[0] is tensors["weight"]
    if not a["return_int"]:
        assert len(got) == 1
        np.testing.assert_array_equal(path.to_numpy(got[0]), _dequantize(stored, zp, expected_scale, a["group_size"]))
        return
    np.testing.assert_array_equal(path.to_numpy(got[0]), stored)
    assert (got[2] is None) == (zp is None)
    if zp is not None:
        np.testing.assert_array_equal(path.to_numpy(got[2]), zp)
    if a.get("double_quant_return_int"):
        codes, hyper_scale, mean = (None if x is None else path.to_numpy(x) for x in got[1])
        assert mean is None  # this variant's scheme is "sym": nothing subtracted
        np.testing.assert_array_equal(_dequantize(codes.reshape(1, -1), None, hyper_scale, 256).reshape(scale.shape),
                                      expected_scale)
    else:
        np.testing.assert_array_equal(path.to_numpy(got[1]), expected_scale)


_DQ_RETURN_INT = cases(DQ, lambda c: c["error"] is not None)


@pytest.mark.parametrize("case", _DQ_RETURN_INT, ids=case_id)
def test_golden_double_quant_return_int(path, case):
    """The reference crashes (ValueError) on double_quant_return_int=True. nbwoq: with
    return_int it returns ``(codes, (scale_codes, hyper_scale, mean), zp)`` whose
    dequantized scales are the golden ones of the same call without the flag; without
    return_int it refuses with a ValueError, before any write."""
    a = case["args"]
    if not a["return_int"]:
        weight = inputs(DQ, case)["weight"]
        with pytest.raises(ValueError, match="needs return_int=True"):
            invoke(nbwoq.quant_tensor, DQ, case, path.to_array)
        return
    twin = _sibling(case, "rtn_defaults")
    assert twin is not None
    codes_w, scale, zp = returned(DQ, twin)
    result, tensors = invoke(nbwoq.quant_tensor, DQ, case, path.to_array)
    weight = inputs(DQ, case)["weight"]
    got_codes, (scale_codes, hyper_scale, mean), got_zp = result
    np.testing.assert_array_equal(path.to_numpy(got_codes), codes_w)
    assert mean is None
    scale_codes, hyper_scale = path.to_numpy(scale_codes), path.to_numpy(hyper_scale)
    assert scale_codes.shape == scale.shape and hyper_scale.shape == (1, -(-scale.size // 256))
    assert np.all(np.abs(scale_codes) <= 127) and np.all(scale_codes == np.rint(scale_codes))
    np.testing.assert_array_equal(_dequantize(scale_codes.reshape(1, -1), None, hyper_scale, 256).reshape(scale.shape),
                                  scale)
    assert weight.shape == codes_w.shape


def test_edge_double_quant_return_int_without_return_int():
    case = cases(EDGE, lambda c: c["args"].get("double_quant"))[0]
    weight = inputs(EDGE, case)["weight"]
    before = weight.tobytes()
    with pytest.raises(ValueError, match="double_quant_return_int"):
        nbwoq.quant_tensor(weight, **case["args"])
    assert weight.tobytes() == before


# --- the scale mean ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 31, 32, 33, 64, 100, 127, 128, 129, 384, 512, 513, 688, 2049,
                               4096 * 4 + 5])
def test_torch_order_sum_matches_the_transcribed_loop(n):
    x = np.random.default_rng(n).uniform(0.001, 0.02, n).astype(np.float32)
    expected = _torch_sum_loop(x)
    assert _double_quant.torch_order_sum(x, np) == expected
    array_api_strict = pytest.importorskip("array_api_strict")
    assert np.asarray(_double_quant.torch_order_sum(array_api_strict.asarray(x), array_api_strict)) == expected


def test_scale_mean_matches_torch():
    """Below torch's parallel grain (32768) its mean is this order on any thread count."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    mismatches = []
    for n in list(range(1, 40)) + list(range(40, 300, 7)) + [512, 1000, 4096, 20000, 32768]:
        x = (rng.uniform(0.001, 0.02, n) * rng.choice([1.0, 3.7, 1e-3], n)).astype(np.float32)
        if _double_quant.scale_mean(x, np) != torch.from_numpy(x).mean().numpy():
            mismatches.append(n)
    assert mismatches == []


# --- properties ---------------------------------------------------------------------


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 6))
    cols = draw(st.sampled_from([1, 33, 64, 100, 256]))
    dtype = draw(st.sampled_from(["int", "nf4", "fp4", "fp4_e2m1"]))
    w = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((rows, cols)).astype(np.float32)
    kwargs = dict(
        bits=draw(st.integers(2, 8)), group_size=draw(st.sampled_from([-1, 8, 16, 48])),
        scheme=draw(st.sampled_from(["sym", "asym"])), dtype=dtype, double_quant=True,
        double_quant_dtype=draw(st.sampled_from(["int", "nf4"])), double_quant_bits=draw(st.integers(2, 8)),
        double_quant_scheme=draw(st.sampled_from(["sym", "asym"])),
        double_quant_group_size=draw(st.sampled_from([-1, 4, 7, 256])),
    )
    return w, kwargs


@SETTINGS
@given(problems())
@example((np.zeros((2, 64), np.float32), dict(dtype="nf4", group_size=16, double_quant=True)))  # scale 0: mean 0
def test_numba_equals_reference_and_codes_are_quant_tensors(p):
    """Both paths agree bit for bit; the codes are quant_tensor's; fake quantization
    equals dequantizing those codes with the returned double-quantized scales."""
    array_api_strict = pytest.importorskip("array_api_strict")
    w, kwargs = p
    codes, scale, zp = nbwoq.quant_tensor(w.copy(), return_int=True, **kwargs)
    plain = nbwoq.quant_tensor(w.copy(), return_int=True, **{k: v for k, v in kwargs.items()
                                                             if not k.startswith("double_quant")})
    np.testing.assert_array_equal(codes, plain[0])
    ref = nbwoq.quant_tensor(array_api_strict.asarray(w.copy()), return_int=True, **kwargs)
    for a, b in zip((codes, scale, zp), ref):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, np.asarray(b))
    fake = nbwoq.quant_tensor(w.copy(), **kwargs)
    np.testing.assert_array_equal(np.asarray(nbwoq.quant_tensor(array_api_strict.asarray(w.copy()), **kwargs)), fake)
    size = w.shape[1] if kwargs.get("group_size", -1) == -1 or kwargs["group_size"] > w.shape[1] else kwargs["group_size"]
    if kwargs["dtype"] == "int":
        expected = _dequantize(codes, zp, scale, size)
    else:
        expected = _dequantize(_levels(codes, kwargs["dtype"]), None, scale, size)
    np.testing.assert_array_equal(fake, expected)


@pytest.mark.parametrize("half", [np.dtype(np.float16), BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("dtype", ["int", "nf4"])
@pytest.mark.parametrize("return_int", [False, True], ids=["fake", "codes"])
def test_half_precision_is_the_float32_result(half, dtype, return_int):
    """SPEC deviation 1: float32 arithmetic, one rounding on store; scales in float32."""
    w = np.random.default_rng(3).standard_normal((8, 200)).astype(half)
    kwargs = dict(group_size=32, dtype=dtype, double_quant=True, return_int=return_int, double_quant_group_size=16)
    got = as_tuple(nbwoq.quant_tensor(w.copy(), **kwargs))
    expected = as_tuple(nbwoq.quant_tensor(w.astype(np.float32), **kwargs))
    assert got[0].dtype == half
    assert_rounded_once(got, expected, half)


def test_mean_is_added_back():
    """With the default scheme the double-quantized scales stay close to the scales
    (the reference's forgotten mean shifts them all by it)."""
    w = np.random.default_rng(4).standard_normal((64, 256)).astype(np.float32)
    _, scale, _ = nbwoq.quant_tensor(w.copy(), group_size=32, return_int=True)
    _, dq_scale, _ = nbwoq.quant_tensor(w.copy(), group_size=32, return_int=True, double_quant=True)
    assert np.max(np.abs(dq_scale - scale)) < 0.01 * np.max(scale)
    fake = nbwoq.quant_tensor(w.copy(), group_size=32, double_quant=True)
    assert np.sqrt(np.mean((fake - w) ** 2)) < 0.2


def test_bits_zero_returns_the_weight_untouched():
    w = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    before = w.tobytes()
    assert nbwoq.quant_tensor(w, bits=0, double_quant=True, return_int=True) is w
    assert w.tobytes() == before


_S = np.ones((4, 2), np.float32)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(double_quant_dtype="fp32"), ValueError, "double_quant_dtype must be one of"),
        (dict(double_quant_bits=0), ValueError, "double_quant_bits must be a positive integer"),
        (dict(double_quant_bits=17), ValueError, "double_quant_bits must be at most 16"),
        (dict(double_quant_bits=8.0), TypeError, "double_quant_bits must be an integer"),
        (dict(double_quant_scheme="Asym"), ValueError, "double_quant_scheme must be one of"),
        (dict(double_quant_group_size=0), ValueError, "double_quant_group_size must be -1 or a positive"),
        (dict(double_quant_return_int="yes"), TypeError, "double_quant_return_int must be True or False"),
        (dict(double_quant_return_int=True), ValueError, "needs return_int=True"),
        (dict(double_quant="yes"), TypeError, "double_quant must be True or False"),
        (dict(double_quant_bit=8), TypeError, "unexpected keyword"),
        (dict(dtype="nf4", scale=_S), ValueError, "cannot take scale="),
        (dict(scale=_S), TypeError, "apply to the 4-bit codebooks only"),
        (dict(cast_int=True), TypeError, "apply to the 4-bit codebooks only"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_arguments_leave_the_weight_untouched(kwargs, exc, match):
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    before = w.tobytes()
    args = dict(group_size=32, double_quant=True)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        nbwoq.quant_tensor(w, **args)
    assert w.tobytes() == before


def test_bad_double_quant_keywords_raise_even_without_double_quant():
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="double_quant_scheme"):
        nbwoq.quant_tensor(w, double_quant_scheme="asymm")
