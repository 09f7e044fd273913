"""What the search kernels share (``_ggml_search``, ``_ggml_search_k``): the kernels'
type numbers, fp16 steps, rounding, in-order sums and the error weights."""

import numpy as np
from numba.extending import register_jitable

from nbwoq._llvm import float_to_half_bits, half_bits_to_float
from nbwoq.formats.ggml_blocks import BLOCK_TYPES

#: Block type name -> the kernel's ``kind`` argument (the order of ``BLOCK_TYPES``).
KIND = {name: i for i, name in enumerate(BLOCK_TYPES)}
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = (KIND[n] for n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                                                                  "Q4_K", "Q5_K", "Q6_K"))
BV = np.array([t.block_values for t in BLOCK_TYPES.values()], dtype=np.int64)
BB = np.array([t.block_bytes for t in BLOCK_TYPES.values()], dtype=np.int64)


# -- halves, rounding, sums -------------------------------------------------------------------------------
@register_jitable
def put_half_bits(o, at, h):
    o[at] = np.uint8(h & 255)
    o[at + 1] = np.uint8((h >> 8) & 255)


@register_jitable
def half_near(v, k):
    """Bits of the fp16 ``k`` steps (-1, 0, 1) from float ``v`` rounded to fp16, or -1
    when that is not a finite half."""
    if not (abs(v) < 65504.0):
        return np.int64(-1)
    h = np.int64(float_to_half_bits(np.float32(v))) + k
    if h < 0 or h > 0xFFFF or (h & 0x7C00) == 0x7C00:
        return np.int64(-1)
    return h


@register_jitable
def h2f(h):
    return half_bits_to_float(np.uint16(h))


@register_jitable
def round_clamp(v, lo, hi):
    """The integer nearest float64 ``v`` (half up), clamped to ``[lo, hi]``; selects, not
    branches, so that the code loops vectorize (``v`` is never NaN here)."""
    v = np.float64(lo) if v < lo else v
    v = np.float64(hi) if v > hi else v
    return np.int64(np.floor(v + 0.5))


@register_jitable
def ordered_sum(t, n):
    """The running sum of ``t[:n]``, in order. The loops that fill ``t`` hold no sum, so
    they vectorize; the sum keeps the order the twin's ``_total`` has."""
    e = 0.0
    for i in range(n):
        e += t[i]
    return e



@register_jitable
def squared_error(x, at, n, d1, m1, L, tmp):
    """Squared error of ``x[at:at + n]`` stored as ``d1 * L - m1`` (float32)."""
    for i in range(n):
        y = d1 * np.float32(L[at + i]) - m1
        diff = np.float64(x[at + i]) - np.float64(y)
        tmp[i] = diff * diff
    return ordered_sum(tmp, n)


@register_jitable
def pair(v, cur, lo, hi):
    """The integers either side of ``v`` clamped to ``[lo, hi]`` (``cur`` twice when ``v``
    is not a usable number): the sub-block integer candidates besides the current one."""
    if not (abs(v) < 1e6):
        return cur, cur
    f = np.floor(v)
    return (np.int64(min(max(f, np.float64(lo)), np.float64(hi))),
            np.int64(min(max(f + 1.0, np.float64(lo)), np.float64(hi))))


# -- weights -----------------------------------------------------------------------------
@register_jitable
def block_weights(x, kind, sigma2, w):
    """The weights the error of block ``x`` is measured with, into ``w`` (float64):
    Q4_K/Q5_K ``rms(sub-block) + |x|`` (``quantize_row_q4_K_ref``'s), Q6_K ``x**2``
    (``make_qx_quants``'), legacy ``sqrt(sigma2 + x**2)`` with ``sigma2`` the row's mean
    square (llama.cpp's legacy weighting without an importance matrix)."""
    n = x.shape[0]
    if kind == Q4_K or kind == Q5_K:
        for j in range(n // 32):
            s = 0.0
            for i in range(32):
                v = np.float64(x[32 * j + i])
                s += v * v
            av = np.sqrt(s / 32.0)
            for i in range(32):
                w[32 * j + i] = av + abs(np.float64(x[32 * j + i]))
    elif kind == Q6_K:
        for i in range(n):
            v = np.float64(x[i])
            w[i] = v * v
    else:
        for i in range(n):
            v = np.float64(x[i])
            w[i] = np.sqrt(sigma2 + v * v)


