"""refine_zero: the Numba kernel and the array-API reference against slow loops.

The oracle is ``naive.refine_zero`` (tests/naive.py). All three run HQQ's iterations in
float64 with the same ``lp_pow`` series and add their sums in the lane order, so codes,
scales and zero points must match exactly.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import naive
import nbwoq
from nbwoq import refine_zero
from nbwoq._kernels_hqq import lp_pow

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _weight(rows, cols, seed=0, scale=0.02):
    """Heavy-tailed, off-centre groups: with a clipped start (quantile < 1) HQQ moves
    some zero points, so the acceptance path is exercised (round-to-nearest's min-max
    grid leaves no integer zero point to gain)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_t(2, (rows, cols)) * scale + 0.3 * scale).astype(np.float32)


def _run(path, w, **kw):
    out = refine_zero(path.to_array(w.copy()), **kw)
    if kw.get("return_int", True) is False:
        return path.to_numpy(out)
    return tuple(path.to_numpy(a) for a in out)


def _lp_errors(w, values, size, p=0.7):
    """Per-group lp error ``sum |x - value|**p`` (float64, NumPy's power)."""
    d = np.abs(w.astype(np.float64) - values.astype(np.float64)) ** p
    return np.stack([d[:, s:s + size].sum(axis=1) for s in range(0, w.shape[1], size)], axis=1)


@pytest.mark.parametrize("weighting", [None, "magnitude"], ids=["uniform", "mag"])
@pytest.mark.parametrize("bits, quantile", [(2, 0.5), (3, 0.7), (4, 0.5), (4, 1.0), (8, 0.6)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("group_size, cols", [(32, 64), (32, 45), (-1, 7), (16, 1)], ids=lambda v: str(v))
def test_matches_naive(path, bits, quantile, weighting, group_size, cols):
    w = _weight(40, cols, seed=cols + bits)
    kw = dict(bits=bits, group_size=group_size, weighting=weighting, quantile=quantile)
    codes, scale, zp = _run(path, w, **kw)
    n_codes, n_scale, n_zp = naive.refine_zero(w, **kw)
    np.testing.assert_array_equal(codes, n_codes)
    np.testing.assert_array_equal(scale, n_scale)
    np.testing.assert_array_equal(zp, n_zp)


def test_moves_zero_points_and_lowers_lp_error(path):
    """On clipped starts some zero points move, each lowering its group's lp error."""
    w = _weight(200, 128, seed=7)
    codes, scale, zp = _run(path, w, bits=4, group_size=32, quantile=0.5)
    _, r_scale, r_zp = nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, quantile=0.5, return_int=True)
    np.testing.assert_array_equal(scale, r_scale)
    moved = zp != r_zp
    assert moved.sum() >= 10
    ours = refine_zero(w.copy(), bits=4, group_size=32, quantile=0.5, return_int=False)
    rtn = nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, quantile=0.5)
    e_ours, e_rtn = _lp_errors(w, ours, 32), _lp_errors(w, rtn, 32)
    assert np.all(e_ours[moved] < e_rtn[moved])
    np.testing.assert_array_equal(e_ours[~moved], e_rtn[~moved])


def test_min_max_start_keeps_round_to_nearest():
    """Round-to-nearest's grid spans the group's min and max: a whole step of zero point
    clips an end, so HQQ's continuous zero (less than a step away) rounds back."""
    w = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    codes, scale, zp = refine_zero(w.copy())
    r = nbwoq.quant_tensor(w.copy(), bits=4, group_size=128, return_int=True)
    for a, b in zip((codes, scale, zp), r):
        np.testing.assert_array_equal(a, b)


def test_per_group_quantile(path):
    w = _weight(6, 96, seed=3)
    q = nbwoq.search_clip(w, bits=4, group_size=32, per_group=True, weighting="magnitude")
    codes, scale, zp = _run(path, w, bits=4, group_size=32, quantile=path.to_array(q))
    n_codes, n_scale, n_zp = naive.refine_zero(w, bits=4, group_size=32, quantile=q)
    np.testing.assert_array_equal(codes, n_codes)
    np.testing.assert_array_equal(zp, n_zp)


@pytest.mark.parametrize("beta, p", [(5e-324, 0.99), (1e-300, 0.5), (1e-300, 1.0), (1e300, 0.1)],
                         ids=["denormal", "tiny", "tiny-p1", "huge"])
def test_extreme_penalties(path, beta, p):
    """A tiny beta puts HQQ's shrink threshold beyond float64 (no residual reaches it),
    a huge one below every residual: both run, and kernel, reference and oracle agree."""
    w = _weight(10, 96, seed=6)
    kw = dict(bits=4, group_size=32, quantile=0.5, beta=beta, p=p, iterations=5)
    codes, scale, zp = _run(path, w, **kw)
    n_codes, n_scale, n_zp = naive.refine_zero(w, **kw)
    np.testing.assert_array_equal(codes, n_codes)
    np.testing.assert_array_equal(zp, n_zp)


def test_zero_iterations_is_round_to_nearest(path):
    w = _weight(8, 200, seed=1)
    codes, scale, zp = _run(path, w, bits=4, group_size=64, iterations=0, quantile=0.5)
    r = nbwoq.quant_tensor(w.copy(), bits=4, group_size=64, quantile=0.5, return_int=True)
    for a, b in zip((codes, scale, zp), r):
        np.testing.assert_array_equal(a, b)


def _kernel_pow(a, y):
    import numba

    @numba.njit
    def run(a, y):
        out = np.empty_like(a)
        for i in range(a.size):
            out[i] = lp_pow(a[i], y)
        return out

    return run(a, y)


EDGES = np.array([5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, 0.5, 1.0, 1.4142135623730951, 2.0, 1e300])


@pytest.mark.parametrize("y", [0.7, -0.3, 1.0, -0.999, 0.0, 0.05])
def test_lp_pow_same_bits_everywhere_and_accurate(y):
    """Kernel, reference (array_api_strict) and the plain-Python series agree bit for bit
    (subnormals included); within 1e-12 of NumPy's power in the normal range."""
    xs = pytest.importorskip("array_api_strict")
    from nbwoq._reference_hqq import lp_pow as ref_pow

    rng = np.random.default_rng(0)
    a = np.concatenate([10.0 ** rng.uniform(-300, 300, 2000), rng.uniform(1e-3, 4, 2000), EDGES])
    k = _kernel_pow(a, y)
    with np.errstate(over="ignore"):
        r = np.asarray(ref_pow(xs.asarray(a), y, xs))
    np.testing.assert_array_equal(k, r)
    np.testing.assert_array_equal(k, [naive.lp_pow(float(v), y) for v in a])
    with np.errstate(over="ignore"):
        exact = a ** y
    ok = (exact > 1e-290) & (exact < 1e290)
    assert np.max(np.abs(k[ok] / exact[ok] - 1)) < 1e-12


@SETTINGS
@given(data=st.data(), bits=st.sampled_from([2, 3, 4, 8]), weighting=st.sampled_from([None, "magnitude"]),
       iterations=st.integers(0, 25), quantile=st.sampled_from([1.0, 0.8, 0.5]),
       p=st.sampled_from([0.7, 0.4, 1.0]))
def test_properties(data, bits, weighting, iterations, quantile, p):
    """Kernel == reference; codes in range and ``clamp(round(x / scale) + zp)`` for the
    returned parameters (quant_tensor's layout); the scale is round-to-nearest's; every
    group's lp error at most round-to-nearest's (up to NumPy's power vs ``lp_pow``)."""
    import array_api_strict as xs

    rows = data.draw(st.integers(1, 4))
    cols = data.draw(st.integers(1, 70))
    group_size = data.draw(st.sampled_from([-1, 1, 8, 32]))
    w = data.draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-100, 100, allow_nan=False, width=32)))
    kw = dict(bits=bits, group_size=group_size, weighting=weighting, iterations=iterations, quantile=quantile, p=p)
    codes, scale, zp = refine_zero(w.copy(), **kw)
    with np.errstate(divide="ignore", invalid="ignore"):  # a scale underflowing to 0, as in RTN
        s_codes, s_scale, s_zp = refine_zero(xs.asarray(w.copy()), **kw)
    np.testing.assert_array_equal(codes, np.asarray(s_codes))
    np.testing.assert_array_equal(scale, np.asarray(s_scale))
    np.testing.assert_array_equal(zp, np.asarray(s_zp))
    r_codes, r_scale, r_zp = nbwoq.quant_tensor(w.copy(), bits=bits, group_size=group_size, quantile=quantile,
                                                return_int=True)
    np.testing.assert_array_equal(scale, r_scale)
    # a group whose scale underflows to 0 (a lone 1e-45) divides by zero, as round to
    # nearest does (README, "Limits"): its codes are no test of range
    assume(bool(np.all(scale != 0)))
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    size = cols if group_size == -1 or group_size > cols else group_size
    s_el = np.repeat(scale, size, axis=1)[:, :cols]
    z_el = np.repeat(zp, size, axis=1)[:, :cols]
    np.testing.assert_array_equal(codes, np.clip(np.rint(w / s_el) + z_el, 0, 2**bits - 1))
    again = nbwoq.quant_weight_w_scale(w.copy(), scale, zp, group_size=group_size, bits=bits)
    np.testing.assert_array_equal(codes, again)
    ours = ((codes - z_el) * s_el).astype(np.float32)
    rtn = ((r_codes - np.repeat(r_zp, size, axis=1)[:, :cols]) * s_el).astype(np.float32)
    if weighting is None:
        assert np.all(_lp_errors(w, ours, size, p) <= _lp_errors(w, rtn, size, p) * (1 + 1e-9))


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
def test_half_inputs_compute_in_float32(dtype):
    w = _weight(8, 256, seed=2).astype(dtype)
    codes, scale, zp = refine_zero(w.copy(), bits=4, group_size=128, quantile=0.5)
    f_codes, f_scale, f_zp = refine_zero(w.astype(np.float32), bits=4, group_size=128, quantile=0.5)
    np.testing.assert_array_equal(codes.astype(np.float32), f_codes)
    np.testing.assert_array_equal(scale, f_scale)
    np.testing.assert_array_equal(zp, f_zp)
    values = refine_zero(w.copy(), bits=4, group_size=128, quantile=0.5, return_int=False)
    expect = ((f_codes - np.repeat(f_zp, 128, 1)) * np.repeat(f_scale, 128, 1)).astype(dtype)
    np.testing.assert_array_equal(values.view(np.uint16), expect.view(np.uint16))


def test_float64_weights_compute_in_float64(path):
    w = _weight(30, 64, seed=5).astype(np.float64)
    codes, scale, zp = _run(path, w, bits=4, group_size=32, quantile=0.5)
    assert scale.dtype == np.float64 and zp.dtype == np.float64
    k_codes, k_scale, k_zp = refine_zero(w.copy(), bits=4, group_size=32, quantile=0.5)
    np.testing.assert_array_equal(codes, k_codes)
    np.testing.assert_array_equal(zp, k_zp)


def test_fake_quant_values_and_identity(path):
    w = _weight(3, 100, seed=4)
    a = path.to_array(w.copy())
    assert refine_zero(a, bits=4, group_size=32, quantile=0.5, return_int=False) is a
    codes, scale, zp = _run(path, w, bits=4, group_size=32, quantile=0.5)
    expect = np.concatenate([(codes[:, s:s + 32] - zp[:, [k]]) * scale[:, [k]]
                             for k, s in enumerate(range(0, 100, 32))], axis=1)
    np.testing.assert_array_equal(path.to_numpy(a), expect)


@pytest.mark.parametrize("kwargs, error", [
    (dict(scheme="sym"), ValueError),
    (dict(scheme="nope"), ValueError),
    (dict(p=0.0), ValueError),
    (dict(p=1.5), ValueError),
    (dict(p=math.nan), ValueError),
    (dict(p="0.7"), TypeError),
    (dict(beta=0.0), ValueError),
    (dict(beta=math.inf), ValueError),
    (dict(kappa=0.5), ValueError),
    (dict(kappa=1e300, iterations=3), ValueError),
    (dict(iterations=-1), ValueError),
    (dict(iterations=1001), ValueError),
    (dict(iterations=1.5), TypeError),
    (dict(weighting="square"), ValueError),
    (dict(weighting=1), TypeError),
    (dict(group_size=0), ValueError),
    (dict(bits=17), ValueError),
    (dict(quantile=1.5), ValueError),
    (dict(quantile=np.ones((2, 2), np.float32)), ValueError),
    (dict(return_int=1), TypeError),
])
def test_bad_arguments_raise_before_writing(kwargs, error):
    w = _weight(4, 64)
    before = w.copy()
    with pytest.raises(error):
        refine_zero(w, **kwargs)
    np.testing.assert_array_equal(w, before)


def test_non_finite_and_read_only():
    w = _weight(4, 64)
    w[2, 5] = np.inf
    before = w.copy()
    with pytest.raises(ValueError, match="row 2"):
        refine_zero(w)
    np.testing.assert_array_equal(w, before)
    ro = _weight(4, 64)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        refine_zero(ro)


def test_bits_zero_untouched():
    w = _weight(2, 8)
    before = w.copy()
    assert refine_zero(w, bits=0) is w
    np.testing.assert_array_equal(w, before)
