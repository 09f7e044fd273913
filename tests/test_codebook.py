"""Properties of 4-bit codebook quantization (NF4/FP4) on both paths and every storage
dtype: the tables, the midpoint rule, codes, values, half precision, refusals."""

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nbwoq
from naive import nearest_level as _naive_level
from naive import quant_tensor_codebook as naive_codebook
from nbwoq import _kernels_codebook, _reference_codebook, _tables
from nbwoq._tables import ZERO_INDEX

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
CODEBOOKS = list(nbwoq.FLOAT_MAPPING)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0/0 of all-zero groups, reference path


# --- the tables ---------------------------------------------------------------------


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("compute", ["float32", "float64"])
def test_midpoint_tables_recomputed_from_the_levels(name, compute):
    """Midpoints are ``(level[i] + level[i+1]) / 2`` in Python floats, rounded once to
    the compute dtype; the kernels' padding can never pick a level."""
    dt = np.dtype(compute)
    levels = nbwoq.FLOAT_MAPPING[name]
    mids, lv, codes, max_level = _tables.kernel_tables(name, compute)
    n = len(levels)
    assert mids.dtype == lv.dtype == codes.dtype == dt
    assert mids.shape == (_tables.N_MIDS,) and lv.shape == codes.shape == (_tables.N_VALUES,)
    expected = [dt.type((levels[i] + levels[i + 1]) / 2) for i in range(n - 1)]
    assert mids[: n - 1].tolist() == [float(m) for m in expected]
    assert np.all(np.isposinf(mids[n - 1:]))
    assert lv[:n].tolist() == [float(dt.type(x)) for x in levels]
    assert codes[:n].tolist() == nbwoq.INT_MAPPING[name]
    assert max_level == dt.type(max(levels)) and max_level.dtype == dt
    assert np.all(lv[: n - 1] < mids[: n - 1]) and np.all(mids[: n - 1] < lv[1:n])
    assert levels[ZERO_INDEX] == 0.0 and nbwoq.INT_MAPPING[name][ZERO_INDEX] == 0
    assert len(nbwoq.FLOAT_MAPPING[name]) == len(nbwoq.INT_MAPPING[name]) == (16 if name == "nf4" else 15)


def test_public_tables_are_the_reference_constants():
    from golden_cases import constant

    for name, table in nbwoq.FLOAT_MAPPING.items():
        key = {"nf4": "NF4", "fp4": "FP4_BNB", "fp4_e2m1_bnb": "FP4_BNB", "fp4_e2m1": "FP4_E2M1"}[name]
        assert table == constant(key)
        assert nbwoq.INT_MAPPING[name] == constant(key + "_BIT")


# --- the midpoint rule ----------------------------------------------------------------


@numba.njit(cache=True)
def _kernel_levels(v, mids):
    """nearest_level as the clip search will call it: tuple and array forms."""
    out = np.empty((2, v.shape[0]), np.int64)
    mt = _kernels_codebook.mids_tuple(mids)
    for i in range(v.shape[0]):
        out[0, i] = _kernels_codebook.nearest_level(v[i], mt)
        out[1, i] = _kernels_codebook.nearest_level(v[i], mids)
    return out


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("compute", ["float32", "float64"])
def test_nearest_level_kernel_reference_and_rule_agree(name, compute):
    dt = np.dtype(compute)
    mids, levels, _, _ = _tables.kernel_tables(name, compute)
    real = mids[np.isfinite(mids)]
    v = np.concatenate([real, np.nextafter(real, np.inf), np.nextafter(real, -np.inf), levels,
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-45]]).astype(dt)
    expected = np.array([_naive_level(x, real) for x in v])
    got = _kernel_levels(v, mids)
    np.testing.assert_array_equal(got[0], expected)
    np.testing.assert_array_equal(got[1], expected)
    xp = nbwoq._arrays.namespace(v)
    np.testing.assert_array_equal(np.asarray(_reference_codebook.nearest_level(v, real, xp)), expected)
    np.testing.assert_array_equal(np.asarray(_reference_codebook.nearest_level(v, mids, xp)), expected)
    array_api_strict = pytest.importorskip("array_api_strict")
    strict = _reference_codebook.nearest_level(array_api_strict.asarray(v), array_api_strict.asarray(mids),
                                               array_api_strict)
    np.testing.assert_array_equal(np.asarray(strict), expected)


def test_codebook_scale_op_order():
    """``absmax * quantile / max_level``: the product is rounded before the division."""
    a, q, m = np.float32(0.7), np.float32(0.9), np.float32(12.0)

    @numba.njit
    def kernel(a, q, m):
        return _kernels_codebook.codebook_scale(a, q, m)

    assert kernel(a, q, m) == np.float32(np.float32(a * q) / m) == _reference_codebook.codebook_scale(a, q, m)


# --- quantization properties ----------------------------------------------------------


@st.composite
def problems(draw, dtypes=(np.float32,)):
    rows = draw(st.integers(1, 5))
    cols = draw(st.sampled_from([1, 3, 33, 128]) | st.integers(1, 200))
    storage = draw(st.sampled_from(dtypes))
    elements = st.floats(-1e4, 1e4, width=32) | st.sampled_from([0.0, -0.0, 1.0, -1.0])
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    if draw(st.booleans()):  # some all-zero groups
        w[:, : cols // 2] = 0
    return dict(
        w=w.astype(storage),
        dtype=draw(st.sampled_from(CODEBOOKS)),
        group_size=draw(st.sampled_from([-1, 1, 7, 32, 64]) | st.integers(1, cols + 2)),
        quantile=draw(st.sampled_from([1.0, 0.9, 0.5]) | st.floats(0.05, 1.0)),
    )


def _kw(p):
    return {k: v for k, v in p.items() if k != "w"}


@SETTINGS
@given(problems())
@example(dict(w=np.zeros((2, 8), np.float32), dtype="nf4", group_size=4, quantile=1.0))
@example(dict(w=np.array([[1.0, 0.8614784479141235, -0.8480963706970215, 0.5]], np.float32), dtype="nf4",
              group_size=-1, quantile=1.0))  # mid[14] and mid[0] exactly: ties go to the lower level
def test_matches_naive_loop(p):
    for return_int in (True, False):
        expected, scales = naive_codebook(p["w"], return_int=return_int, **_kw(p))
        out, scale, zp = nbwoq.quant_tensor(p["w"].copy(), return_int=True, **_kw(p))
        np.testing.assert_array_equal(scale, scales)
        assert zp is None
        if return_int:
            np.testing.assert_array_equal(out, expected)
        else:
            np.testing.assert_array_equal(nbwoq.quant_tensor(p["w"].copy(), **_kw(p)), expected)


@SETTINGS
@given(problems(dtypes=(np.float32, np.float64)))
def test_numba_equals_reference(p):
    """The Numba kernel and its array-API twin agree bit for bit (codes, scales, values),
    float64 (computed in float64) included."""
    array_api_strict = pytest.importorskip("array_api_strict")
    for return_int in (True, False):
        a = nbwoq.quant_tensor(p["w"].copy(), return_int=return_int, **_kw(p))
        b = nbwoq.quant_tensor(array_api_strict.asarray(p["w"].copy()), return_int=return_int, **_kw(p))
        for x, y in zip(a if return_int else (a,), b if return_int else (b,)):
            if x is None:
                assert y is None
            else:
                assert x.dtype == np.asarray(y).dtype == p["w"].dtype
                np.testing.assert_array_equal(x, np.asarray(y))


@SETTINGS
@given(problems(dtypes=(np.float32, np.float64)))
def test_codes_are_valid_and_values_are_levels_times_scale(p):
    codes, scale, _ = nbwoq.quant_tensor(p["w"].copy(), return_int=True, **_kw(p))
    table = nbwoq.INT_MAPPING[p["dtype"]]
    assert set(np.unique(codes).tolist()) <= set(table)
    values = nbwoq.quant_tensor(p["w"].copy(), **_kw(p))
    level_of = dict(zip(table, nbwoq.FLOAT_MAPPING[p["dtype"]]))
    cols = codes.shape[1]
    g = cols if p["group_size"] == -1 or p["group_size"] > cols else p["group_size"]
    dt = p["w"].dtype.type
    levels = np.vectorize(lambda c: dt(level_of[int(c)]))(codes).astype(p["w"].dtype)
    np.testing.assert_array_equal(values, levels * np.repeat(scale, g, axis=1)[:, :cols])


@SETTINGS
@given(problems())
def test_codes_are_stable_under_requantization(p):
    """Fake-quantizing again with quantile 1 picks the same levels (the scale may move by
    an ulp, the levels are far apart)."""
    kw = dict(_kw(p), quantile=1.0)
    # a subnormal scale loses the values' magnitude (1e-45 / 12 is 0): not a level choice
    assume(np.all((p["w"] == 0) | (np.abs(p["w"]) >= 1e-30)))
    once = nbwoq.quant_tensor(p["w"].copy(), **kw)
    np.testing.assert_array_equal(nbwoq.quant_tensor(once.copy(), return_int=True, **kw)[0],
                                  nbwoq.quant_tensor(p["w"].copy(), return_int=True, **kw)[0])


@SETTINGS
@given(problems(), st.sampled_from(["float16", "bfloat16"]))
def test_half_precision_rounds_once(p, half):
    """SPEC deviation 1: float32 arithmetic on the half values, one rounding on store;
    scales in float32."""
    dtype = np.dtype(np.float16) if half == "float16" else BF16
    x = p["w"].astype(np.float32).astype(dtype)
    if not np.all(np.isfinite(x.astype(np.float32))):
        return
    for return_int in (True, False):
        got = nbwoq.quant_tensor(x.copy(), return_int=return_int, **_kw(p))
        expected = nbwoq.quant_tensor(x.astype(np.float32), return_int=return_int, **_kw(p))
        if return_int:
            assert got[1].dtype == np.float32
            np.testing.assert_array_equal(got[1], expected[1])
            got, expected = got[0], expected[0]
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.astype(np.float32), expected.astype(dtype).astype(np.float32))


@pytest.mark.parametrize("name", CODEBOOKS)
def test_all_zero_groups(path, name):
    """The reference's quirk, kept: scale 0, the code of level 0.0, value 0."""
    w = np.zeros((3, 64), np.float32)
    w[1, 40:] = np.linspace(-1, 1, 24)
    codes, scale, zp = nbwoq.quant_tensor(path.to_array(w.copy()), group_size=32, dtype=name, return_int=True)
    codes, scale = path.to_numpy(codes), path.to_numpy(scale)
    assert zp is None
    assert scale[0, 0] == scale[0, 1] == scale[1, 0] == 0
    assert np.all(codes[0] == 0) and np.all(codes[1, :32] == 0)
    values = path.to_numpy(nbwoq.quant_tensor(path.to_array(w.copy()), group_size=32, dtype=name))
    assert np.all(values[0] == 0) and not np.any(np.isnan(values))


def test_nan_group_with_check_finite_false(path):
    """The reference's behaviour on a NaN: its group's scale is NaN, every value of the
    group lands on the level 0.0 (code 0) and the fake-quantized group is NaN."""
    w = np.ones((2, 64), np.float32)
    w[0, 3] = np.nan
    codes, scale, _ = nbwoq.quant_tensor(path.to_array(w.copy()), group_size=32, dtype="nf4", return_int=True,
                                         check_finite=False)
    codes, scale = path.to_numpy(codes), path.to_numpy(scale)
    assert np.isnan(scale[0, 0]) and not np.isnan(scale[0, 1])
    assert np.all(codes[0, :32] == 0) and np.all(codes[0, 32:] == -1)
    values = path.to_numpy(nbwoq.quant_tensor(path.to_array(w.copy()), group_size=32, dtype="nf4",
                                              check_finite=False))
    assert np.all(np.isnan(values[0, :32])) and np.all(values[0, 32:] == 1)


def test_in_place_views_and_layouts():
    """Results land in the caller's memory: strided views, Fortran order, half views."""
    base = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)
    keep = base.copy()
    view = base[:, ::2]
    expected = nbwoq.quant_tensor(np.ascontiguousarray(view), group_size=32, dtype="fp4")
    assert nbwoq.quant_tensor(view, group_size=32, dtype="fp4") is view
    np.testing.assert_array_equal(base[:, ::2], expected)
    np.testing.assert_array_equal(base[:, 1::2], keep[:, 1::2])
    fortran = np.asfortranarray(keep)
    out = nbwoq.quantize_4bit(fortran, return_int=True)[0]
    assert out is fortran and np.shares_memory(out, fortran)
    np.testing.assert_array_equal(out, nbwoq.quantize_4bit(keep.copy(), return_int=True)[0])
    half = keep.astype(BF16)
    pointer = half.__array_interface__["data"][0]
    assert nbwoq.quant_tensor(half, group_size=64, dtype="nf4").__array_interface__["data"][0] == pointer


def test_given_scale_is_used_and_returned_untouched(path):
    w = np.random.default_rng(2).standard_normal((4, 50)).astype(np.float32)
    scale = np.full((4, 1), 0.5, np.float32)
    s = path.to_array(scale.copy())
    out, got_scale, zp = nbwoq.quantize_4bit(path.to_array(w.copy()), dtype="fp4_e2m1", return_int=True, scale=s,
                                             quantile=0.5)
    assert got_scale is s and zp is None
    np.testing.assert_array_equal(path.to_numpy(s), scale)
    expected = nbwoq.quant_weight_w_scale(w.copy(), scale, dtype="fp4_e2m1")
    np.testing.assert_array_equal(path.to_numpy(out), expected)
    fake = nbwoq.quant_tensor(path.to_array(w.copy()), group_size=25, dtype="nf4", scale=path.to_array(
        np.full((4, 2), 0.25, np.float32)))
    codes = nbwoq.quant_weight_w_scale(w.copy(), np.full((4, 2), 0.25, np.float32), group_size=25, dtype="nf4")
    levels = dict(zip(nbwoq.NF4_BIT, nbwoq.NF4))
    np.testing.assert_array_equal(path.to_numpy(fake),
                                  np.vectorize(lambda c: np.float32(levels[int(c)]))(codes) * np.float32(0.25))


def test_cast_int_stores_codes_then_scales_them():
    """``cast_int``: the reference's meaning, codes multiplied by the scale."""
    w = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    codes, scale, _ = nbwoq.quantize_4bit(w.copy(), return_int=True)
    np.testing.assert_array_equal(nbwoq.quantize_4bit(w.copy(), cast_int=True), codes * scale)
    np.testing.assert_array_equal(nbwoq.quantize_4bit(w.copy(), cast_int=False), nbwoq.quantize_4bit(w.copy()))


def test_per_group_quantile_array_equals_per_group_calls():
    w = np.random.default_rng(4).standard_normal((3, 100)).astype(np.float32)
    q = np.random.default_rng(5).uniform(0.8, 1.0, size=(3, 4)).astype(np.float32)
    out = nbwoq.quant_tensor(w.copy(), group_size=32, dtype="nf4", quantile=q)
    for r in range(3):
        for k in range(4):
            seg = w[r: r + 1, 32 * k: 32 * (k + 1)].copy()
            nbwoq.quantize_4bit(seg, quantile=float(q[r, k]))
            np.testing.assert_array_equal(out[r: r + 1, 32 * k: 32 * (k + 1)], seg)


def test_empty_weights():
    for shape in [(0, 16), (3, 0)]:
        w = np.zeros(shape, np.float32)
        out, scale, zp = nbwoq.quant_tensor(w, group_size=8, dtype="nf4", return_int=True)
        assert out is w and scale.shape[0] == shape[0] and zp is None


def test_bits_scheme_full_range_are_ignored():
    w = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    base = nbwoq.quant_tensor(w.copy(), group_size=32, dtype="nf4")
    for kw in (dict(bits=8), dict(bits=2, scheme="sym", full_range=True), dict(bits=1, scheme="sym", full_range=True)):
        np.testing.assert_array_equal(nbwoq.quant_tensor(w.copy(), group_size=32, dtype="nf4", **kw), base)
    np.testing.assert_array_equal(nbwoq.qdq_weight_actor(w.copy(), 3, "sym", dtype="nf4", full_range=True),
                                  nbwoq.quantize_4bit(w.copy()))


# --- refused arguments ------------------------------------------------------------------


def _weight(shape=(4, 64)):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


_FUNCS = {
    "quantize_4bit": lambda w, **kw: nbwoq.quantize_4bit(w, **kw),
    "qdq_weight_actor": lambda w, **kw: nbwoq.qdq_weight_actor(w, 4, "asym", **{"dtype": "nf4", **kw}),
    "quant_tensor": lambda w, **kw: nbwoq.quant_tensor(w, **{"dtype": "nf4", "group_size": 32, **kw}),
}


@pytest.mark.parametrize("func", list(_FUNCS))
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(dtype="nf5"), ValueError, "dtype must be one of"),
        (dict(quantile=0.0), ValueError, "quantile must be in"),
        (dict(quantile="1"), TypeError, "quantile must be a real number"),
        (dict(return_int=1), TypeError, "return_int must be True or False"),
        (dict(cast_int="yes"), TypeError, "cast_int must be True or False"),
        (dict(double_quant=None), TypeError, "double_quant must be True or False"),
        (dict(scale=np.ones((4, 3), np.float32)), ValueError, "scale must have shape"),
        (dict(scale=np.ones((4, 2), np.int64)), TypeError, "scale must be a floating-point array"),
        (dict(scale=2.0), TypeError, "scale must be a NumPy array"),
        (dict(check_finite="no"), TypeError, "check_finite must be True or False"),
        (dict(scael=np.ones((4, 1))), TypeError, "unexpected keyword"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_arguments_leave_the_weight_untouched(func, kwargs, exc, match):
    w = _weight()
    before = w.tobytes()
    with pytest.raises(exc, match=match):
        _FUNCS[func](w, **kwargs)
    assert w.tobytes() == before


@pytest.mark.parametrize("func", list(_FUNCS))
def test_refused_weights(func):
    w = _weight()
    w[3, 9] = np.nan
    before = w.tobytes()
    with pytest.raises(ValueError, match="first in row 3"):
        _FUNCS[func](w)
    assert w.tobytes() == before
    ro = _weight()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _FUNCS[func](ro)
    with pytest.raises(ValueError, match="2-D"):
        _FUNCS[func](np.zeros(64, np.float32))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        _FUNCS[func](np.zeros((4, 64), np.int32))


def test_quantize_4bit_refuses_the_int_dtype():
    w = _weight()
    before = w.tobytes()
    with pytest.raises(ValueError, match=r"dtype must be one of \('nf4'"):
        nbwoq.quantize_4bit(w, dtype="int")
    assert w.tobytes() == before


def test_a_foreign_scale_is_refused_on_the_reference_path():
    array_api_strict = pytest.importorskip("array_api_strict")
    w = array_api_strict.asarray(_weight())
    with pytest.raises(TypeError, match="scale must be an array of the weight's kind"):
        nbwoq.quantize_4bit(w, scale=np.ones((4, 1), np.float32))
    np.testing.assert_array_equal(np.asarray(w), _weight())
