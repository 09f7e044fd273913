"""dual_scale: the Numba kernel and the array-API reference against the naive oracle.

The oracle (``naive.sinkhorn_factor``, ``naive.dual_group_errors``) folds with
``fold_column_scale`` and quantizes with ``quant_tensor``, one call per candidate, and
sums in NumPy's order: errors agree to rounding, choices wherever the best candidate is
not a near tie. The kernel and the reference twin add in one order: their results are
equal bit for bit.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import naive
import nbwoq
from nbwoq import dual_scale
from nbwoq.dual import DEFAULT_ALPHAS, sinkhorn_factor

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FORMATS = {
    "asym": dict(scheme="asym"),
    "sym": dict(scheme="sym"),
    "symfull": dict(scheme="sym", full_range=True),
}
GROUP = nbwoq.AbsorbGroup("feeder", "norm", ("w",))


def _weight(rows, cols, seed=0):
    """Columns of very different spread, and a few outliers: what a column scale is for."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * rng.lognormal(0, 1, cols)
    if w.size:
        w.flat[rng.integers(0, w.size, max(1, w.size // 100))] *= 6
    return w.astype(np.float32)


def _result(path, weights, **kw):
    r = dual_scale([path.to_array(w) for w in weights], **kw)
    return path.to_numpy(r.scale), path.to_numpy(r.alpha), r.error, r.rtn_error


def _folded_error(w, scale, setting, weighting="magnitude", group_size=128):
    """Fold ``scale`` into ``w``, quantize with quant_tensor, measure on ``w``."""
    return naive.dual_group_errors(w, [scale], group_size=group_size, weighting=weighting, **setting).sum()


@pytest.mark.parametrize("weighting", ["magnitude", None], ids=["mag", "uniform"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("bits", [3, 4], ids=lambda b: f"bits{b}")
@pytest.mark.parametrize("group_size, cols", [(32, 96), (32, 70), (-1, 40)], ids=lambda v: str(v))
def test_matches_naive(path, bits, fmt, weighting, group_size, cols):
    weights = [_weight(12, cols, seed=cols + bits), _weight(5, cols, seed=bits)]
    setting = dict(bits=bits, **FORMATS[fmt])
    scale, alpha, error, rtn_error = _result(path, weights, group_size=group_size, weighting=weighting, **setting)
    stacked = np.concatenate(weights)
    mu = naive.sinkhorn_factor(stacked.astype(np.float64), 16)
    np.testing.assert_allclose(sinkhorn_factor(stacked.astype(np.float64), 16, np), mu, rtol=1e-9)
    alphas = (0.0,) + DEFAULT_ALPHAS
    cand = [mu ** a for a in alphas]
    errs = naive.dual_group_errors(stacked, cand, group_size=group_size, weighting=weighting, **setting)
    np.testing.assert_allclose(rtn_error, errs[0].sum(), rtol=1e-6)
    np.testing.assert_allclose(error, errs.min(axis=0).sum(), rtol=1e-6)
    size = cols if group_size == -1 else group_size
    for g in range(errs.shape[1]):
        order = np.sort(errs[:, g])
        if order[1] - order[0] > 1e-6 * order[0]:  # a clear winner: the same choice
            assert np.all(alpha[g * size:(g + 1) * size] == alphas[int(np.argmin(errs[:, g]))])
    np.testing.assert_allclose(scale, np.concatenate(
        [cand[alphas.index(a)][j:j + 1] for j, a in enumerate(alpha)]), rtol=1e-9)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fold_then_quantize_gives_the_claimed_error(path, fmt):
    w = _weight(48, 256, seed=7)
    r = dual_scale(path.to_array(w), bits=4, group_size=64, **FORMATS[fmt])
    scale = path.to_numpy(r.scale)
    assert r.error < r.rtn_error
    assert r.error == _folded_error(w, scale, dict(bits=4, **FORMATS[fmt]), group_size=64) or np.isclose(
        r.error, _folded_error(w, scale, dict(bits=4, **FORMATS[fmt]), group_size=64), rtol=1e-12)
    assert np.isclose(r.rtn_error, _folded_error(w, np.ones(256), dict(bits=4, **FORMATS[fmt]), group_size=64),
                      rtol=1e-12)


def test_grouped_query_tie(path):
    """o_proj behind v_proj with 2 query heads per value head: tied columns share one
    scale, and the result has one value per feeder channel."""
    heads, kv, hd = 4, 2, 16
    o = _weight(32, heads * hd, seed=3)
    r = dual_scale(path.to_array(o), bits=4, group_size=16, repeat=heads // kv, block=hd)
    scale = path.to_numpy(r.scale)
    assert scale.shape == (kv * hd,)
    group = nbwoq.AbsorbGroup("v", "rows", ("o",), repeat=heads // kv, block=hd)
    cons = nbwoq.absorb.consumer_scale(group, scale)
    measured = _folded_error(o, cons, dict(bits=4), group_size=16)
    assert np.isclose(r.error, measured, rtol=1e-12)
    assert r.error <= r.rtn_error


def test_zero_iterations_and_only_zero_alpha_are_round_to_nearest(path):
    w = _weight(16, 64, seed=2)
    for kw in (dict(iterations=0), dict(alphas=())):
        r = dual_scale(path.to_array(w), bits=4, group_size=32, **kw)
        assert np.all(path.to_numpy(r.scale) == 1.0) and np.all(path.to_numpy(r.alpha) == 0.0)
        assert r.error == r.rtn_error


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from(list(FORMATS)), bits=st.sampled_from([2, 3, 4, 8]),
       weighting=st.sampled_from(["magnitude", None]), k=st.integers(-3, 3))
def test_properties(data, fmt, bits, weighting, k):
    """Kernel == reference bit for bit; the scale positive and finite; never worse than
    round to nearest; the fold then quantize reproduces the claimed error; a power of
    two on the weight changes nothing but the errors' scale."""
    rows = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(1, 70))
    group_size = data.draw(st.sampled_from([-1, 1, 8, 32]))
    w = data.draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-100, 100, allow_nan=False, width=32)))
    kw = dict(bits=bits, group_size=group_size, weighting=weighting, **FORMATS[fmt])
    r = dual_scale(w, **kw)
    import array_api_strict as xs
    s = dual_scale(xs.asarray(w), **kw)
    np.testing.assert_array_equal(r.scale, np.asarray(s.scale))
    np.testing.assert_array_equal(r.alpha, np.asarray(s.alpha))
    assert (r.error, r.rtn_error) == (s.error, s.rtn_error)
    assert r.scale.shape == (cols,) and np.all(np.isfinite(r.scale) & (r.scale > 0))
    assert r.error <= r.rtn_error * (1 + 1e-12)
    setting = dict(bits=bits, **FORMATS[fmt])
    with np.errstate(all="ignore"):  # a group of subnormals: quant_tensor divides by a zero scale
        measured = _folded_error(w, r.scale, setting, weighting, group_size)
    if np.isfinite(r.rtn_error) and np.all(np.abs(w[w != 0]) > 1e-30):
        assert np.isclose(r.error, measured, rtol=1e-9, atol=1e-30)
    scaled = dual_scale(w * np.float32(2.0 ** k), **kw)
    if np.all(np.abs(w[w != 0]) > 1e-30):
        np.testing.assert_array_equal(scaled.alpha, r.alpha)
        np.testing.assert_array_equal(scaled.scale, r.scale)


@pytest.mark.parametrize("k", [-3, -1, 1, 2, 3])
def test_power_of_two_at_a_tie_of_the_geometric_mean(k):
    """Column spreads 1 and 2: the mean of log2 of the Sinkhorn factor is 0.5 exactly,
    and ``k + 0.5`` for the weight times ``2**k``; the normalization must not break that
    tie by ``k``'s parity (which hypothesis's simple floats can draw)."""
    w = np.array([[1, 2], [-1, -2]], np.float32)
    scaled = w * np.float32(2.0**k)
    np.testing.assert_array_equal(sinkhorn_factor(scaled.astype(np.float64), 16, np),
                                  sinkhorn_factor(w.astype(np.float64), 16, np))
    for gs in (-1, 1):
        r, s = dual_scale(w, bits=2, group_size=gs), dual_scale(scaled, bits=2, group_size=gs)
        np.testing.assert_array_equal(s.scale, r.scale)
        np.testing.assert_array_equal(s.alpha, r.alpha)


@pytest.mark.parametrize("direction", [np.full(64, 5e-324), np.full(64, 1.7e308),
                                       np.r_[np.full(32, 5e-324), np.full(32, 1.7e308)],
                                       np.r_[np.full(63, 1e-300), 1e300]], ids=["tiny", "huge", "both", "one"])
def test_extreme_directions(path, direction):
    """Any positive finite direction: the power of two nearest its geometric mean may
    not be a float64 number (2**1074), and nothing overflows on the way."""
    import warnings

    w = _weight(8, 64, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = dual_scale(path.to_array(w), bits=4, group_size=16, direction=path.to_array(direction))
    scale = path.to_numpy(r.scale)
    assert np.all(np.isfinite(scale) & (scale > 0)) and r.error <= r.rtn_error
    cand = np.unique(path.to_numpy(r.alpha))
    assert set(cand) <= set((0.0,) + DEFAULT_ALPHAS)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float64], ids=["f16", "bf16", "f64"])
def test_other_dtypes(dtype):
    w = _weight(32, 128, seed=4).astype(dtype)
    r = dual_scale(w, bits=4, group_size=32)
    assert r.error <= r.rtn_error
    measured = _folded_error(w, r.scale, dict(bits=4), group_size=32)
    assert np.isclose(r.error, measured, rtol=1e-3 if dtype != np.float64 else 1e-12)


def test_lowers_error_with_unbalanced_columns():
    w = _weight(128, 512, seed=5)
    r = dual_scale(w, bits=4, group_size=128, weighting=None)
    assert r.error < 0.8 * r.rtn_error
    assert np.any(r.alpha > 0)


@pytest.mark.parametrize("kwargs, error", [
    (dict(weighting="square"), ValueError),
    (dict(iterations=-1), ValueError),
    (dict(iterations=1.5), TypeError),
    (dict(alphas=(0.5, "x")), TypeError),
    (dict(alphas=(5.0,)), ValueError),
    (dict(alphas=(float("nan"),)), ValueError),
    (dict(alphas=0.5), TypeError),
    (dict(scheme="nope"), ValueError),
    (dict(group_size=0), ValueError),
    (dict(bits=0), ValueError),
    (dict(bits=17), ValueError),
    (dict(scheme="sym", full_range=True, bits=1), ValueError),
    (dict(repeat=2), ValueError),
    (dict(repeat=3, block=8), ValueError),
    (dict(repeat=1, block=4), ValueError),
    (dict(check_finite=1), TypeError),
])
def test_bad_arguments_raise(kwargs, error):
    w = _weight(4, 64)
    before = w.copy()
    with pytest.raises(error):
        dual_scale(w, **kwargs)
    np.testing.assert_array_equal(w, before)


def test_at_most_64_alphas_besides_zero():
    """The docstring's limit: 64 distinct powers besides 0 (which is always tried)."""
    w = _weight(4, 64)
    many = tuple(np.linspace(-4, 4, 65)[np.linspace(-4, 4, 65) != 0])
    assert len(many) == 64
    assert dual_scale(w, bits=4, group_size=32, alphas=many + (0.0, many[0])).scale.shape == (64,)
    with pytest.raises(ValueError, match="at most 64"):
        dual_scale(w, bits=4, group_size=32, alphas=many + (4.0 - 1e-9,))


def test_bad_weights():
    w = _weight(4, 64)
    with pytest.raises(ValueError, match="at least one"):
        dual_scale([])
    with pytest.raises(ValueError, match="columns"):
        dual_scale([w, _weight(4, 32)])
    with pytest.raises(TypeError, match="dtype"):
        dual_scale([w, w.astype(np.float64)])
    with pytest.raises(TypeError):
        dual_scale([w, "x"])
    bad = w.copy()
    bad[3, 1] = np.inf
    with pytest.raises(nbwoq.NonFiniteError, match=r"weights\[1\].*row 3"):
        dual_scale([w, bad])
    ro = w.copy()
    ro.flags.writeable = False
    assert dual_scale(ro).scale.shape == (64,)  # only read: a read-only weight is fine


def test_empty():
    r = dual_scale(np.zeros((0, 8), np.float32))
    assert r.scale.tolist() == [1.0] * 8 and r.error == r.rtn_error == 0.0


def test_column_weights_and_direction(path):
    """Column weights enter the error as a factor per column (kernel == reference ==
    oracle); a given direction replaces the Sinkhorn factor; both validated."""
    w = _weight(24, 96, seed=8)
    rng = np.random.default_rng(8)
    colw = rng.lognormal(0, 1, 96)
    direction = rng.lognormal(0, 1, 96)
    kw = dict(bits=4, group_size=32, alphas=(-0.5, 0.5, 1.0))
    r = dual_scale(path.to_array(w), column_weights=path.to_array(colw), direction=path.to_array(direction), **kw)
    mu = naive.normalized(direction)
    errs = naive.dual_group_errors(w, [mu ** a for a in (0, -0.5, 0.5, 1)],
                                   group_size=32, weighting="magnitude", bits=4, column_weights=colw)
    np.testing.assert_allclose(r.error, errs.min(axis=0).sum(), rtol=1e-6)
    np.testing.assert_allclose(r.rtn_error, errs[0].sum(), rtol=1e-6)
    import array_api_strict as xs
    s = dual_scale(xs.asarray(w), column_weights=xs.asarray(colw), direction=xs.asarray(direction), **kw)
    t = dual_scale(w, column_weights=colw, direction=direction, **kw)
    assert (s.error, s.rtn_error) == (t.error, t.rtn_error)
    np.testing.assert_array_equal(np.asarray(s.scale), t.scale)
    for bad, error in [(dict(column_weights=-colw), ValueError), (dict(column_weights=colw[:5]), ValueError),
                       (dict(direction=direction * 0), ValueError), (dict(direction="x"), TypeError)]:
        with pytest.raises(error):
            dual_scale(w, **kw, **bad)


@pytest.mark.parametrize("cols", [1, 3, 4, 7, 130])
def test_scaled_moments_kernel_equals_reference(cols):
    """The Sinkhorn statistics: Numba kernel and array-API twin add in one order."""
    import array_api_strict as xs
    from nbwoq import _kernels_dual, _reference_dual

    rng = np.random.default_rng(cols)
    m = rng.standard_normal((9, cols)) * 3
    v = rng.lognormal(0, 1, cols)
    mean, sq = np.empty(9), np.empty(9)
    _kernels_dual.scaled_moments(m, v, mean, sq)
    r_mean, r_sq = _reference_dual.scaled_moments(xs.asarray(m), xs.asarray(v), xs)
    np.testing.assert_array_equal(mean, np.asarray(r_mean))
    np.testing.assert_array_equal(sq, np.asarray(r_sq))
    np.testing.assert_allclose(mean, (m * v).mean(axis=1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sq, ((m * v) ** 2).mean(axis=1), rtol=1e-12)
