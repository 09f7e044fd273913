"""Properties of integer group quantization, on both paths and every storage dtype."""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nbwoq
import naive
from golden_cases import as_tuple, assert_rounded_once

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

AWKWARD_COLS = [1, 3, 33, 128, 1023]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, dtypes=(np.float32,)):
    rows = draw(st.integers(1, 6))
    cols = draw(st.sampled_from(AWKWARD_COLS) | st.integers(1, 300))
    dtype = draw(st.sampled_from(dtypes))
    elements = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=elements)).astype(dtype)
    scheme = draw(st.sampled_from(["asym", "sym"]))
    bits = draw(st.integers(1, 16))
    full_range = scheme == "sym" and bits > 1 and draw(st.booleans())
    group_size = draw(st.sampled_from([-1, 1, 2, 3, 7, 32, 48, 128]) | st.integers(1, cols + 2))
    quantile = draw(st.sampled_from([1.0, 0.9, 0.5]) | st.floats(0.05, 1.0))
    return dict(w=w, bits=bits, group_size=group_size, scheme=scheme, quantile=quantile, full_range=full_range)


def _kwargs(p):
    return {k: v for k, v in p.items() if k != "w"}


def code_range(bits, scheme):
    if scheme == "asym":
        return 0, 2**bits - 1
    if bits == 1:
        return 0, 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@SETTINGS
@given(problems(dtypes=(np.float32, np.float64)))
def test_numba_equals_reference(p):
    """The Numba kernel and its array-API twin agree bit for bit (codes, scales, values)."""
    array_api_strict = pytest.importorskip("array_api_strict")
    for return_int in (True, False):
        a = p["w"].copy()
        b = array_api_strict.asarray(p["w"].copy())
        ra = nbwoq.quant_tensor(a, return_int=return_int, **_kwargs(p))
        rb = nbwoq.quant_tensor(b, return_int=return_int, **_kwargs(p))
        for x, y in zip(ra if return_int else (ra,), rb if return_int else (rb,)):
            if x is None:
                assert y is None
            else:
                np.testing.assert_array_equal(x, np.asarray(y))
                assert x.dtype == np.asarray(y).dtype


@SETTINGS
@given(problems())
def test_matches_naive_loops(p):
    codes, scales, zps = naive.quant_tensor_int(p["w"], **_kwargs(p))
    w = p["w"].copy()
    out, scale, zp = nbwoq.quant_tensor(w, return_int=True, **_kwargs(p))
    np.testing.assert_array_equal(out, codes)
    np.testing.assert_array_equal(scale, scales)
    if p["scheme"] == "asym":
        np.testing.assert_array_equal(zp, zps)
    else:
        assert zp is None


@SETTINGS
@given(problems(dtypes=(np.float32, np.float64)))
@example(p=dict(w=np.array([[1e-45]], np.float32), bits=2, group_size=-1, scheme="asym", quantile=1.0,
                full_range=False))  # found by hypothesis: a scale that underflows to 0
@example(p=dict(w=np.array([[1e-45]], np.float32), bits=3, group_size=-1, scheme="sym", quantile=1.0,
                full_range=False))  # found by hypothesis: x / 0 = inf, clamped to the top code
def test_codes_in_range_and_whole(p):
    w = p["w"].copy()
    out, scale, zp = nbwoq.quant_tensor(w, return_int=True, **_kwargs(p))
    lo, hi = code_range(p["bits"], p["scheme"])
    # A group so tiny that its scale underflows to 0 (e.g. one 1e-45) divides by zero, as
    # in the reference (README, "Limits"): 0 / 0 gives NaN codes, x / 0 = +-inf clamps to
    # a bound. Every other code is whole and in range.
    size = out.shape[1] if scale.shape[1] == 1 else p["group_size"]
    underflow = np.repeat(scale == 0, size, axis=1)[:, :out.shape[1]]
    lost = out[underflow]
    assert np.all(np.isnan(lost) | (lost == lo) | (lost == hi))
    kept = out[~underflow]
    assert np.all(kept == np.rint(kept))
    assert kept.size == 0 or (kept.min() >= lo and kept.max() <= hi)
    assert scale.shape == (w.shape[0], -(-w.shape[1] // (w.shape[1] if p["group_size"] == -1 or p["group_size"] > w.shape[1] else p["group_size"])))


@SETTINGS
@given(problems())
def test_dequantized_error_within_half_step_inside_clip_range(p):
    """Inside the clip range every value is within half a step of its dequantized value."""
    kw = _kwargs(p)
    codes, scale, zp = nbwoq.quant_tensor(p["w"].copy(), return_int=True, **kw)
    deq = nbwoq.quant_tensor(p["w"].copy(), **kw)
    rows, cols = p["w"].shape
    g = scale.shape[1]
    size = cols if g == 1 else kw["group_size"]
    step = np.abs(np.repeat(scale, size, axis=1)[:, :cols]).astype(np.float64)
    lo, hi = code_range(p["bits"], p["scheme"])
    zpe = 0 if zp is None else np.repeat(zp, size, axis=1)[:, :cols]
    inside = (codes > lo) & (codes < hi)  # not clamped
    err = np.abs(p["w"].astype(np.float64) - deq.astype(np.float64))
    bound = 0.5 * step * (1 + 1e-5) + np.abs(p["w"].astype(np.float64)) * 1e-6
    assert np.all(err[inside] <= bound[inside])
    np.testing.assert_array_equal(deq, ((codes - zpe) * np.repeat(scale, size, axis=1)[:, :cols]).astype(np.float32))


@SETTINGS
@given(problems())
def test_fake_quant_is_idempotent_on_codes(p):
    """Quantizing dequantized values with the same scales reproduces the codes."""
    kw = _kwargs(p)
    codes, scale, zp = nbwoq.quant_tensor(p["w"].copy(), return_int=True, **kw)
    deq = nbwoq.quant_tensor(p["w"].copy(), **kw)
    rows, cols = deq.shape
    size = cols if scale.shape[1] == 1 else kw["group_size"]
    s = np.repeat(scale, size, axis=1)[:, :cols]
    z = 0 if zp is None else np.repeat(zp, size, axis=1)[:, :cols]
    lo, hi = code_range(p["bits"], p["scheme"])
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(np.rint(deq / s) + z, lo, hi)
    # a scale that underflowed to 0 (subnormal groups) cannot be inverted
    finite = np.isfinite(deq) & (s != 0)
    np.testing.assert_array_equal(again[finite], codes[finite])


@SETTINGS
@given(problems(), st.sampled_from(["float16", "bfloat16"]))
def test_half_precision_rounds_once(p, half):
    """SPEC deviation 1: a half weight gives the float32 result rounded once on store."""
    dtype = np.dtype(np.float16) if half == "float16" else BF16
    w = p["w"].astype(dtype)
    if not np.all(np.isfinite(w.astype(np.float32))):
        return
    ref = w.astype(np.float32)
    for return_int in (False, True):
        x = w.copy()
        got = as_tuple(nbwoq.quant_tensor(x, return_int=return_int, **_kwargs(p)))
        expected = as_tuple(nbwoq.quant_tensor(ref.copy(), return_int=return_int, **_kwargs(p)))
        assert got[0] is x and x.dtype == dtype
        assert_rounded_once(got, expected, dtype)


@pytest.mark.parametrize("cols", AWKWARD_COLS)
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("group_size", [-1, 32, 128])
def test_awkward_shapes_same_object(rows, cols, group_size):
    w = np.random.default_rng(cols).standard_normal((rows, cols)).astype(np.float32)
    expected = naive.quant_tensor_int(w, 4, group_size, "asym")[0]
    out, scale, zp = nbwoq.quant_tensor(w, bits=4, group_size=group_size, return_int=True)
    assert out is w
    np.testing.assert_array_equal(out, expected)


def test_non_contiguous_input_is_quantized_in_place():
    """A strided view is quantized where it lies; the columns between are untouched."""
    base = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)
    keep = base.copy()
    view = base[:, ::2]
    expected = nbwoq.quant_tensor(np.ascontiguousarray(view), bits=4, group_size=32)
    out = nbwoq.quant_tensor(view, bits=4, group_size=32)
    assert out is view
    np.testing.assert_array_equal(base[:, ::2], expected)
    np.testing.assert_array_equal(base[:, 1::2], keep[:, 1::2])
    fortran = np.asfortranarray(keep)
    np.testing.assert_array_equal(nbwoq.quant_tensor(fortran, bits=3, group_size=64),
                                  nbwoq.quant_tensor(keep.copy(), bits=3, group_size=64))


def test_per_group_quantile_array_equals_per_group_calls():
    """A (rows, n_groups) quantile clips each group with its own ratio."""
    w = np.random.default_rng(2).standard_normal((4, 100)).astype(np.float32)
    q = np.random.default_rng(3).uniform(0.8, 1.0, size=(4, 4)).astype(np.float32)
    out = nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, quantile=q)
    for r in range(4):
        for k in range(4):
            seg = w[r : r + 1, 32 * k : 32 * (k + 1)].copy()
            nbwoq.quant_tensor(seg, bits=4, group_size=-1, quantile=float(q[r, k]))
            np.testing.assert_array_equal(out[r : r + 1, 32 * k : 32 * (k + 1)], seg)


def test_empty_weights():
    for shape in [(0, 16), (3, 0)]:
        w = np.zeros(shape, np.float32)
        out, scale, zp = nbwoq.quant_tensor(w, group_size=8, return_int=True)
        assert out is w and scale.shape[0] == shape[0]


def test_check_finite_false_skips_the_scan():
    w = np.array([[1.0, np.nan, 2.0, 3.0]], np.float32)
    out = nbwoq.quant_tensor(w, bits=4, check_finite=False)
    assert np.isnan(out).all()  # the reference's behaviour: a NaN group is all NaN
