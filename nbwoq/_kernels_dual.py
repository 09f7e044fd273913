"""Numba kernel of the dual-axis scale search: the error of each candidate column scale.

For candidate ``k`` the consumers' columns are divided by ``scale[k]`` (what
``fold_column_scale`` does: float64 quotient, rounded once to the weight's dtype), each
group is quantized to nearest as ``quant_tensor(..., return_int=False)`` does (its own
helpers: ``int_group_params``, ``int_code``, the dequantized value stored in the
weight's dtype), multiplied back by the scale in float64 and compared with the original
element. One task per (row, group), all candidates in a row while the group sits in
cache; the candidates never write the weight.

Determinism: every sum is float64 in the refit kernel's lane order (element ``i`` into
lane ``i % 4``, lanes added as ``(l0 + l1) + (l2 + l3)``); fastmath stays off (codes are
decided here). The array-API twin ``_reference_dual`` repeats the order, so both give
the same bits.
"""

import numpy as np
from numba import prange

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._kernels_int import group_minmax, int_code, int_group_params
from nbwoq._kernels_lanes import MAGNITUDE, element_weight, lane_sum, magnitude_rms
from nbwoq._layout import group_segment


@njit_kernel
def dual_errors(w, scales, colw, size, n_groups, qmin, qmax, divisor, sym, full_range, weighting, err_out):
    """``err_out[k, r, g]``: the weighted squared error of group ``g`` of row ``r`` of
    ``w`` when its columns are divided by ``scales[k]`` (float64, one per column) before
    round-to-nearest and multiplied by it after. Weights ``rms + |x|`` of the original
    group (``weighting == MAGNITUDE``, as ``refit_int``) or 1, times the column's
    ``colw`` (float64, one per column). ``w`` is only read."""
    rows = w.shape[0]
    n_cand = scales.shape[0]
    zero = divisor - divisor
    one = divisor / divisor
    for t in prange(rows * n_groups):
        r, g, seg = group_segment(w, t, n_groups, size)
        n = seg.shape[0]
        start = g * size
        x64 = np.empty(n, dtype=np.float64)
        wt = np.empty(n, dtype=np.float64)
        sq = np.empty(n, dtype=np.float64)
        ybuf = np.empty(n, dtype=w.dtype)
        cell = np.full(1, divisor)  # one value of the compute type
        for i in range(n):
            x = decode(seg[i])
            x64[i] = np.float64(x)
            sq[i] = x64[i] * x64[i]
        rms = zero
        if weighting == MAGNITUDE:
            rms = magnitude_rms(sq, n, cell)
        for i in range(n):
            x = decode(seg[i])
            wt[i] = element_weight(rms, x, weighting) * colw[start + i]
        for k in range(n_cand):
            for i in range(n):
                ybuf[i] = encode(x64[i] / scales[k, start + i], w)
            lo, hi = group_minmax(ybuf, False)
            scale, zp = int_group_params(lo, hi, one, divisor, sym, full_range, zero, one)
            for i in range(n):
                code = int_code(decode(ybuf[i]), scale, zp, qmin, qmax)
                d = x64[i] - np.float64(decode(encode((code - zp) * scale, w))) * scales[k, start + i]
                sq[i] = wt[i] * d * d
            err_out[k, r, g] = lane_sum(sq, n)


@njit_kernel
def scaled_moments(m, v, mean_out, sq_out):
    """Per row ``i`` of ``m`` (float64, C-ordered): the mean and the mean square of
    ``m[i, :] * v``, float64 sums in the lane order (``_reference_dual`` repeats it).
    The Sinkhorn start's statistics, without a threaded BLAS (which, sharing the cores
    with Numba's threads, ran several times slower than this)."""
    rows, n = m.shape
    n4 = n - n % 4
    for i in prange(rows):
        a0 = a1 = a2 = a3 = np.float64(0)
        b0 = b1 = b2 = b3 = np.float64(0)
        for j in range(0, n4, 4):
            x = m[i, j] * v[j]
            a0 += x
            b0 += x * x
            x = m[i, j + 1] * v[j + 1]
            a1 += x
            b1 += x * x
            x = m[i, j + 2] * v[j + 2]
            a2 += x
            b2 += x * x
            x = m[i, j + 3] * v[j + 3]
            a3 += x
            b3 += x * x
        for j in range(n4, n):
            x = m[i, j] * v[j]
            k = j - n4
            if k == 0:
                a0 += x
                b0 += x * x
            elif k == 1:
                a1 += x
                b1 += x * x
            else:
                a2 += x
                b2 += x * x
        mean_out[i] = ((a0 + a1) + (a2 + a3)) / n
        sq_out[i] = ((b0 + b1) + (b2 + b3)) / n
