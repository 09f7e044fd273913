"""``nbwoq._simd``: every vector operation equals C's scalar float32 operation lane by lane,
NaN, signed zeros and out-of-range conversions included (the K-quant searches rely on it)."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

from nbwoq._simd import (imin, lane_max, lane_min, lane_sum, load8, load16, nearest_clamp, select, shl, splat8,
                         store, store_bytes, to_float, trunc_int8, vabs, vsqrt, widen)

_f = np.float32


@njit(cache=False)
def _arith(a, b, out):
    x = load8(a, 0)
    y = load8(b, 0)
    store(out, 0, x + y)
    store(out, 8, x - y)
    store(out, 16, x * y)
    store(out, 24, x / y)
    store(out, 32, -x)
    store(out, 40, vabs(x))
    store(out, 48, vsqrt(vabs(x)))
    z = x
    z += y
    z *= y
    store(out, 56, z)


@njit(cache=False)
def _compare(a, b, out):
    x = load8(a, 0)
    y = load8(b, 0)
    one = splat8(_f(1))
    zero = splat8(_f(0))
    store(out, 0, select(x < y, one, zero))
    store(out, 8, select(x > y, one, zero))
    store(out, 16, select(x <= y, one, zero))
    store(out, 24, select(x >= y, one, zero))
    store(out, 32, select(x == y, one, zero))
    store(out, 40, select(x != y, one, zero))
    store(out, 48, select((x < y) | (x == y), one, zero))
    store(out, 56, select((x < y) & (x != y), one, zero))


@njit(cache=False)
def _integer(a, lo, hi, codes, floats, packed):
    x = load8(a, 0)
    l = nearest_clamp(x, lo, hi)
    store(codes, 0, l)
    store(floats, 0, to_float(l))
    t = imin(trunc_int8(x), 15)
    store(codes, 8, t)
    store(codes, 16, (t & splat8(np.int32(255))) | shl(l, 4))
    store(codes, 24, l + t)
    store_bytes(packed, 0, t)


@njit(cache=False)
def _reduce(a, a16):
    x = load8(a, 0)
    d = widen(x)
    return lane_max(x), lane_min(x), lane_sum(x), lane_sum(d * d), lane_max(load16(a16, 0))


def _nearest_int(v):
    """llama.cpp's ``nearest_int`` (the 1.5 * 2**23 trick, wrapping out of range)."""
    t = (np.asarray(v, np.float32) + _f(12582912.0)).view(np.int32).astype(np.int64)
    return (t & 0x007FFFFF) - 0x00400000


def _trunc_int8(v):
    """x86's ``(int8_t)v``: cvttss2si (0x80000000 out of range or NaN), low byte."""
    v = np.asarray(v, np.float64)
    inside = (v > -2.0**31) & (v < 2.0**31)
    t = np.where(inside, np.trunc(np.where(inside, v, 0)), -(2**31)).astype(np.int64)
    return ((t & 255) ^ 128) - 128


_special = st.sampled_from([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3e38, -3e38, 0.5, -0.5, 1.5, 2.5])
_lanes = st.lists(st.one_of(st.floats(width=32), _special), min_size=8, max_size=8).map(lambda v: np.array(v, _f))


@settings(max_examples=200, deadline=None)
@given(_lanes, _lanes)
@example(np.array([0, 0, 0, 0, -np.nan, 0, 0, 0], _f), np.array([0, 0, 0, 0, np.nan, 0, 0, 0], _f))  # found by CI
def test_arithmetic_is_scalar_float32(a, b):
    out = np.zeros(64, _f)
    _arith(a, b, out)
    with np.errstate(all="ignore"):
        want = [a + b, a - b, a * b, a / b, -a, np.abs(a), np.sqrt(np.abs(a)), (a + b) * b]
    for k, w in enumerate(want):
        got, w = out[8 * k:8 * k + 8], np.asarray(w, _f)
        if k not in (4, 5, 6):  # two operands: IEEE leaves open which NaN (sign, payload) comes out
            np.testing.assert_array_equal(np.isnan(got), np.isnan(w))
            got, w = np.where(np.isnan(w), _f(0), got), np.where(np.isnan(w), _f(0), w)
        np.testing.assert_array_equal(got.view(np.uint32), w.view(np.uint32))


@settings(max_examples=200, deadline=None)
@given(_lanes, _lanes)
def test_comparisons_are_c_comparisons(a, b):
    out = np.zeros(64, _f)
    _compare(a, b, out)
    with np.errstate(invalid="ignore"):
        want = [a < b, a > b, a <= b, a >= b, a == b, a != b, (a < b) | (a == b), (a < b) & (a != b)]
    for k, w in enumerate(want):
        np.testing.assert_array_equal(out[8 * k:8 * k + 8], w.astype(_f))


@settings(max_examples=300, deadline=None)
@given(_lanes, st.integers(-40, 5), st.integers(0, 70))
def test_integer_conversions_are_llama_cpp_and_x86(a, lo, hi):
    codes = np.zeros(32, np.int32)
    floats = np.zeros(8, _f)
    packed = np.zeros(8, np.uint8)
    _integer(a, lo, hi, codes, floats, packed)
    with np.errstate(all="ignore"):
        l = np.maximum(lo, np.minimum(hi, _nearest_int(a)))
        t = np.minimum(15, _trunc_int8(a))
    np.testing.assert_array_equal(codes[:8], l)
    np.testing.assert_array_equal(floats, l.astype(_f))
    np.testing.assert_array_equal(codes[8:16], t)
    np.testing.assert_array_equal(codes[16:24], ((t & 255) | (l << 4)).astype(np.int32))
    np.testing.assert_array_equal(codes[24:32], l + t)
    np.testing.assert_array_equal(packed, (t & 255).astype(np.uint8))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-2.0**100, 2.0**100, width=32), min_size=16, max_size=16).map(lambda v: np.array(v, _f)))
def test_lane_reductions(a):
    mx, mn, total, squares, mx16 = _reduce(a[:8].copy(), a)
    assert mx == a[:8].max() and mn == a[:8].min() and mx16 == a.max()
    # folded in halves: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
    h = a[:4] + a[4:8]
    q = h[:2] + h[2:]
    assert np.float32(total).view(np.uint32) == (q[0] + q[1]).view(np.uint32)
    np.testing.assert_allclose(squares, (a[:8].astype(np.float64) ** 2).sum(), rtol=1e-12)
