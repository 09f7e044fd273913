"""Numba kernel for the least-squares refit of integer group parameters.

Round-to-nearest takes a group's scale from its min and max; the codes it then picks
would be reproduced better by another scale (and zero point). This kernel alternates the
two steps of a coordinate descent on the importance-weighted squared error, one group at
a time while it sits in cache:

1. codes: nearest code for the current scale and zero point (``int_code``, the very
   helper quant_tensor uses), scoring the weighted error and the five sums a fit needs;
2. fit: the scale (and, asym, the integer zero point) that minimize the weighted error
   for those codes, in closed form.

A new scale and zero point are kept only when their codes lower the weighted error, so
no group ever ends worse than where it started (round-to-nearest, or a given clip).

Determinism: every sum is accumulated in float64 in element order, with the operation
order written in ``_score``; fastmath stays off (codes are decided here). The array-API
twin ``_reference_refit`` follows the same order, so both give the same bits.
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._kernels_int import group_minmax, int_code, int_group_params

#: ``weighting`` codes of the kernel.
UNIFORM = 0
MAGNITUDE = 1


@register_jitable
def group_rms(seg):
    """``sqrt(mean(x**2))`` of the group: float64 squares summed in element order."""
    acc = np.float64(0)
    for i in range(seg.shape[0]):
        x = np.float64(decode(seg[i]))
        acc += x * x
    return np.sqrt(acc / seg.shape[0])


@register_jitable
def _score(seg, scale, zp, qmin, qmax, rms, weighting, one, sums):
    """Codes of ``seg`` for ``(scale, zp)``: returns their weighted squared error and
    fills ``sums`` with ``sum(w)``, ``sum(w q)``, ``sum(w q q)``, ``sum(w x)``,
    ``sum(w x q)`` (float64, element order). ``w`` is ``rms + |x|`` (magnitude) or 1."""
    err = np.float64(0)
    a = np.float64(0)
    b = np.float64(0)
    c = np.float64(0)
    d = np.float64(0)
    e = np.float64(0)
    for i in range(seg.shape[0]):
        x = decode(seg[i])
        q = int_code(x, scale, zp, qmin, qmax)
        wt = rms + abs(x) if weighting == MAGNITUDE else one
        dx = x - (q - zp) * scale  # the value quant_tensor would store, in the compute type
        w64 = np.float64(wt)
        q64 = np.float64(q)
        d64 = np.float64(dx)
        err += (w64 * d64) * d64
        a += w64
        wq = w64 * q64
        b += wq
        c += wq * q64
        wx = w64 * np.float64(x)
        d += wx
        e += wx * q64
    sums[0] = a
    sums[1] = b
    sums[2] = c
    sums[3] = d
    sums[4] = e
    return err


@register_jitable
def _gain(z, b, c, d, e, a):
    """Numerator and denominator of the best scale for zero point ``z``: ``num / den``;
    the weighted error then drops by ``num**2 / den`` from ``sum(w x**2)``."""
    num = e - z * d
    den = c - (2 * z) * b + (z * z) * a
    return num, den


@register_jitable
def fit(sums, scale, zp, qmin, qmax, sym):
    """Scale and zero point (float64) minimizing the weighted error for the codes whose
    sums are ``sums``; ``ok`` False when none is defined (all-zero weights or codes).

    sym: ``scale = sum(w x q) / sum(w q q)``, zero point 0. asym: the zero point is an
    integer in ``[qmin, qmax]``: the two integers around the continuous optimum and the
    current one are tried (current first: it wins ties), each with its best positive scale.
    """
    a = sums[0]
    b = sums[1]
    c = sums[2]
    d = sums[3]
    e = sums[4]
    zero = np.float64(0)
    if sym:
        if c > zero:
            return True, e / c, zero
        return False, zero, zero
    best_gain = zero
    best_num = zero
    best_den = zero
    best_z = np.float64(zp)
    found = False
    lo = np.float64(qmin)
    hi = np.float64(qmax)
    det = a * c - b * b
    n_cand = 1
    z_lo = best_z
    if det > zero:
        s_c = (a * e - b * d) / det
        m_c = (c * d - b * e) / det
        if s_c > zero:
            z_lo = np.floor(-m_c / s_c)
            n_cand = 3
    for k in range(n_cand):
        if k == 0:
            z = np.float64(zp)
        else:
            z = z_lo + (k - 1)
            z = lo if z < lo else z
            z = hi if z > hi else z
        num, den = _gain(z, b, c, d, e, a)
        if den > zero and num > zero:
            g = num * num / den
            if not found or g > best_gain:
                found = True
                best_gain = g
                best_num = num
                best_den = den
                best_z = z
    if not found:
        return False, zero, zero
    return True, best_num / best_den, best_z


@njit_kernel
def refit_int(w, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range, weighting, iterations,
              store_values, scale_out, zp_out):
    """Refit every group of ``w`` and write its codes (or, ``store_values``, the
    fake-quantized values) in place; scales and zero points into ``scale_out`` and
    ``zp_out`` (rows, n_groups), in the compute type.

    ``quantile`` is (1, 1) or (rows, n_groups): the clip ratio of the starting point
    (round-to-nearest's parameters for that ratio). At most ``iterations`` fits per group;
    a fit is kept only when it lowers the weighted error. ``weighting``: ``UNIFORM`` or
    ``MAGNITUDE``. Rows in parallel, groups of a row in order.
    """
    rows, cols = w.shape
    zero = divisor - divisor
    one = divisor / divisor
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    for r in prange(rows):
        sums = np.empty(5, dtype=np.float64)
        cell = np.empty(1, dtype=scale_out.dtype)
        for g in range(n_groups):
            start = g * size
            seg = w[r, start:min(start + size, cols)]
            lo, hi = group_minmax(seg, False)
            q = quantile[r, g] if per_group else quantile[0, 0]
            scale, zp = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)
            rms = zero
            if weighting == MAGNITUDE:
                cell[0] = group_rms(seg)  # stored: rounded to the compute type
                rms = cell[0]
            err = _score(seg, scale, zp, qmin, qmax, rms, weighting, one, sums)
            for _ in range(iterations):
                ok, s64, z64 = fit(sums, scale, zp, qmin, qmax, sym)
                if not ok:
                    break
                cell[0] = s64  # stored: rounded to the compute type
                new_scale = cell[0]
                cell[0] = z64  # a whole number in [qmin, qmax]: exact
                new_zp = cell[0]
                if new_scale == zero or (new_scale == scale and new_zp == zp):
                    break
                new_err = _score(seg, new_scale, new_zp, qmin, qmax, rms, weighting, one, sums)
                if not (new_err < err):
                    break
                scale = new_scale
                zp = new_zp
                err = new_err
            scale_out[r, g] = scale
            zp_out[r, g] = zp
            if store_values:
                for i in range(seg.shape[0]):
                    code = int_code(decode(seg[i]), scale, zp, qmin, qmax)
                    seg[i] = encode((code - zp) * scale, w)
            else:
                for i in range(seg.shape[0]):
                    seg[i] = encode(int_code(decode(seg[i]), scale, zp, qmin, qmax), w)
