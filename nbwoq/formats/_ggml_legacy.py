"""The legacy 32-value blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), encoded so that LLVM
vectorizes every step: the helpers of the row kernels (``_ggml_rows``).

They write the bytes of ``_ggml_encode``'s ``_enc_q4``/``_enc_q5``/``_enc_q8_0`` (llama.cpp's
``quantize_row_*_ref``; ``_ggml_reference`` is the slow twin the tests hold them to), but
those walk a block value by value: the scale's maximum (or minimum) is a chain of
float compares that the vectorizer may not reorder, and every code goes through a
branch. Here:

- maxima and minima are integer reductions over order-preserving keys of the float
  bits, which vectorize; the value llama.cpp's loop keeps is then the *first* value
  equal to that extreme (its loop updates only on a strict compare), found as the
  smallest matching index, another integer reduction. Only a zero extreme needs that
  index (+0.0 and -0.0 compare equal but store different halves); any other extreme
  is the same float wherever it occurs.
- C's float -> int conversions are ``_cvtt32`` (x86's ``cvttss2si``: out of range gives
  INT_MIN) as a select, so the code loops have no branch.

Every value operation stays float32 in llama.cpp's order, without fastmath.
Blocks come as 2-D arrays (blocks, 32) and (blocks, bytes), indexed ``[b, j]``: no slice
(and no reference count) per block, and each block's values are contiguous to the
vectorizer.
"""

import numpy as np
from numba.extending import register_jitable

from nbwoq._llvm import _float_intrinsic, float_to_half_bits, fmax_finite, fmin_finite
from nbwoq.formats._ggml_encode import (F0, F8_5, F15, F16_5, F31, F_HALF, FM8, FM16, F2, F127, _ratio)

#: ``floor`` as one instruction (Numba calls libm's ``floorf`` for ``np.floor`` on a scalar).
_floor = _float_intrinsic("llvm.floor", 1)

_F_I32_LO = np.float32(-2147483648.0)
_F_I32_HI = np.float32(2147483648.0)


@register_jitable
def _cvtt32(v):
    """C's float -> int as x86 converts (``cvttss2si``): INT_MIN when out of range or NaN.
    The value is chosen first and converted unconditionally (-2**31 converts to INT_MIN):
    no branch in the code loops."""
    return np.int32(v if (v > _F_I32_LO) & (v < _F_I32_HI) else _F_I32_LO)


@register_jitable
def _int8_32(v):
    """The ``int8_t`` an int wraps to, as int32."""
    return ((v & np.int32(255)) ^ np.int32(128)) - np.int32(128)


@register_jitable
def _first_index(x, b, v, w):
    """The index of the first of ``x[b, :w]`` equal to ``v`` (a branch-free reduction)."""
    first = w
    for j in range(w):
        first = min(first, j + w * np.int64(x[b, j] != v))
    return first


@register_jitable
def _first_index_abs(x, b, v, w):
    """The index of the first of ``x[b, :w]`` whose magnitude is ``v``."""
    first = w
    for j in range(w):
        first = min(first, j + w * np.int64(abs(x[b, j]) != v))
    return first


@register_jitable
def _put_half2(o, b, at, v):
    h = float_to_half_bits(v)
    o[b, at] = np.uint8(h & 255)
    o[b, at + 1] = np.uint8(h >> 8)


@register_jitable
def block_scales(x, o, asym, top, neg, lo, idv):
    """Every block's parameters, as ``_legacy_scale`` makes them: asym ``d = (hi - lo) / top``
    and the min, sym ``d = absmax / neg`` (the first value of the largest magnitude), stored
    as halves at the start of the block's bytes ``o[b]``; ``lo[b]`` (0 for sym) and
    ``idv[b] = 1 / d`` for the codes.

    The maxima are ``maxnum``/``minnum`` reductions over a loop whose length (32) the
    compiler does not know, so LLVM vectorizes them rather than unrolling a chain of
    compares (the data is finite: ``nnan`` holds). Where either signed zero may come
    back, llama.cpp's loop (which updates on a strict compare) keeps the first zero.
    """
    w = x.shape[1]
    for b in range(x.shape[0]):
        if asym:
            mn = x[b, 0]
            mx = x[b, 0]
            for j in range(w):
                mn = fmin_finite(mn, x[b, j])
                mx = fmax_finite(mx, x[b, j])
            if mn == F0:
                mn = x[b, _first_index(x, b, F0, w)]
            if mx == F0:
                mx = x[b, _first_index(x, b, F0, w)]
            d = (mx - mn) / top
            _put_half2(o, b, 2, mn)
        else:
            mn = x[b, 0]
            mx = x[b, 0]
            for j in range(w):
                mn = fmin_finite(mn, x[b, j])
                mx = fmax_finite(mx, x[b, j])
            # The first value of the largest magnitude: the max or the min, whichever is
            # larger in magnitude; the first of the two only when they tie (+0.0 for zeros).
            signed = mx if mx > -mn else mn
            if mx == -mn:
                signed = F0 if mx == F0 else x[b, _first_index_abs(x, b, mx, w)]
            mn = F0
            d = signed / neg
        _put_half2(o, b, 0, d)
        lo[b] = mn
        idv[b] = _ratio(d)


@register_jitable
def enc_q4(x, o, asym, lo, idv):
    """Q4_0 (``asym`` False) or Q4_1 of the blocks ``x`` (n, 32) into ``o`` (n, bytes);
    ``lo`` and ``idv`` (n,) are scratch."""
    block_scales(x, o, asym, F15, FM8, lo, idv)
    h = x.shape[1] // 2
    at = 4 if asym else 2
    add = F_HALF if asym else F8_5
    for b in range(x.shape[0]):
        m = lo[b]
        s = idv[b]
        for j in range(h):
            q0 = min(np.int32(15), _int8_32(_cvtt32((x[b, j] - m) * s + add)))
            q1 = min(np.int32(15), _int8_32(_cvtt32((x[b, h + j] - m) * s + add)))
            o[b, at + j] = np.uint8(((q0 & 255) | (q1 << 4)) & 255)


@register_jitable
def enc_q5(x, o, asym, lo, idv):
    """Q5_0 (``asym`` False) or Q5_1 of the blocks ``x`` (n, 32) into ``o`` (n, bytes);
    ``lo`` and ``idv`` (n,) are scratch."""
    block_scales(x, o, asym, F31, FM16, lo, idv)
    h = x.shape[1] // 2
    at = 4 if asym else 2
    for b in range(x.shape[0]):
        m = lo[b]
        s = idv[b]
        qh = np.int64(0)
        for j in range(h):
            if asym:
                q0 = _cvtt32((x[b, j] - m) * s + F_HALF) & 255
                q1 = _cvtt32((x[b, h + j] - m) * s + F_HALF) & 255
            else:
                q0 = min(np.int32(31), _int8_32(_cvtt32(x[b, j] * s + F16_5))) & 255
                q1 = min(np.int32(31), _int8_32(_cvtt32(x[b, h + j] * s + F16_5))) & 255
            o[b, at + 4 + j] = np.uint8((q0 & 15) | ((q1 & 15) << 4))
            qh |= (((q0 & 16) >> 4) << j) | (((q1 & 16) >> 4) << (j + 16))
        for k in range(4):
            o[b, at + k] = np.uint8((qh >> (8 * k)) & 255)


@register_jitable
def enc_q8_0(x, o):
    """Q8_0 of the blocks ``x`` (n, 32) into ``o`` (n, 34); codes round half away from 0."""
    w = x.shape[1]
    for b in range(x.shape[0]):
        amax = F0
        for j in range(w):
            amax = fmax_finite(amax, abs(x[b, j]))
        d = amax / F127
        idv = _ratio(d)
        _put_half2(o, b, 0, d)
        for j in range(w):
            v = x[b, j] * idv
            a = abs(v)
            fl = _floor(a)
            r = fl + _floor(F2 * (a - fl))  # roundf: half away from zero
            o[b, 2 + j] = np.uint8(_cvtt32(-r if v < F0 else r) & 255)
