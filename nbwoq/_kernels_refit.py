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

Determinism: every sum is accumulated in float64 in a fixed order (``_kernels_lanes``), with the
operation order written out here; fastmath stays off (codes are decided here). The
group's own sums (``sum(w)``, ``sum(w x)``, ``sum(w x x)``) are taken once; each pass
over the codes adds three more and the error follows from the six. The array-API
twin ``_reference_refit`` follows the same order, so both give the same bits.
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._kernels_int import group_minmax, int_code, int_group_params
from nbwoq._kernels_lanes import MAGNITUDE, element_weight, magnitude_rms

@register_jitable
def _group_sums(xbuf, rms, weighting, n, wbuf, wxbuf):
    """Element weights ``w`` (float64 of ``rms + |x|`` or 1) into ``wbuf``, ``w x`` into
    ``wxbuf``; returns ``sum(w)``, ``sum(w x)``, ``sum(w x x)`` in the lane order."""
    a0 = a1 = a2 = a3 = np.float64(0)
    d0 = d1 = d2 = d3 = np.float64(0)
    f0 = f1 = f2 = f3 = np.float64(0)
    for i in range(n):
        x = xbuf[i]
        w64 = element_weight(rms, x, weighting)
        x64 = np.float64(x)
        wx = w64 * x64
        wbuf[i] = w64
        wxbuf[i] = wx
        wxx = wx * x64
        k = i % 4
        if k == 0:
            a0 += w64
            d0 += wx
            f0 += wxx
        elif k == 1:
            a1 += w64
            d1 += wx
            f1 += wxx
        elif k == 2:
            a2 += w64
            d2 += wx
            f2 += wxx
        else:
            a3 += w64
            d3 += wx
            f3 += wxx
    return (a0 + a1) + (a2 + a3), (d0 + d1) + (d2 + d3), (f0 + f1) + (f2 + f3)


@register_jitable
def _code_sums(wbuf, wxbuf, qbuf, n):
    """``sum(w q)``, ``sum(w q q)``, ``sum(w x q)`` in float64, lane order; ``w q`` and
    ``w x`` are products of float64 values, multiplied by ``q`` last."""
    b0 = b1 = b2 = b3 = np.float64(0)
    c0 = c1 = c2 = c3 = np.float64(0)
    e0 = e1 = e2 = e3 = np.float64(0)
    n4 = n - n % 4
    for i in range(0, n4, 4):
        q = np.float64(qbuf[i])
        wq = wbuf[i] * q
        b0 += wq
        c0 += wq * q
        e0 += wxbuf[i] * q
        q = np.float64(qbuf[i + 1])
        wq = wbuf[i + 1] * q
        b1 += wq
        c1 += wq * q
        e1 += wxbuf[i + 1] * q
        q = np.float64(qbuf[i + 2])
        wq = wbuf[i + 2] * q
        b2 += wq
        c2 += wq * q
        e2 += wxbuf[i + 2] * q
        q = np.float64(qbuf[i + 3])
        wq = wbuf[i + 3] * q
        b3 += wq
        c3 += wq * q
        e3 += wxbuf[i + 3] * q
    for i in range(n4, n):
        k = i - n4
        q = np.float64(qbuf[i])
        wq = wbuf[i] * q
        if k == 0:
            b0 += wq
            c0 += wq * q
            e0 += wxbuf[i] * q
        elif k == 1:
            b1 += wq
            c1 += wq * q
            e1 += wxbuf[i] * q
        else:
            b2 += wq
            c2 += wq * q
            e2 += wxbuf[i] * q
    return (b0 + b1) + (b2 + b3), (c0 + c1) + (c2 + c3), (e0 + e1) + (e2 + e3)


@register_jitable
def _score(xbuf, wbuf, wxbuf, qbuf, n, scale, zp, qmin, qmax, sums):
    """Codes of the group (``xbuf[:n]``, compute type) for ``(scale, zp)`` into ``qbuf``;
    fills ``sums[1]``, ``sums[2]``, ``sums[4]`` (``sum(w q)``, ``sum(w q q)``,
    ``sum(w x q)``; ``sums[0] = sum(w)``, ``sums[3] = sum(w x)`` and ``sums[5] =
    sum(w x x)`` are the group's constants) and returns the weighted squared error
    ``sum(w (x - (q - zp) scale)**2)``, expanded over the sums."""
    for i in range(n):  # no reduction: vectorizes, true division kept
        qbuf[i] = int_code(xbuf[i], scale, zp, qmin, qmax)
    b, c, e = _code_sums(wbuf, wxbuf, qbuf, n)
    sums[1] = b
    sums[2] = c
    sums[4] = e
    return error_from_sums(sums, np.float64(scale), np.float64(zp))


@register_jitable
def error_from_sums(sums, s, z):
    """``sum(w x x) - 2 s sum(w x (q - z)) + s s sum(w (q - z)**2)`` in float64."""
    a = sums[0]
    b = sums[1]
    c = sums[2]
    d = sums[3]
    e = sums[4]
    f = sums[5]
    return f - (2 * s) * (e - z * d) + (s * s) * (c - (2 * z) * b + (z * z) * a)


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
        sums = np.empty(6, dtype=np.float64)
        cell = np.empty(1, dtype=scale_out.dtype)
        xbuf = np.empty(size, dtype=scale_out.dtype)
        qbuf = np.empty(size, dtype=scale_out.dtype)
        wbuf = np.empty(size, dtype=np.float64)
        wxbuf = np.empty(size, dtype=np.float64)
        sq = np.empty(size, dtype=np.float64)
        for g in range(n_groups):
            start = g * size
            seg = w[r, start:min(start + size, cols)]
            n = seg.shape[0]
            lo, hi = group_minmax(seg, False)
            q = quantile[r, g] if per_group else quantile[0, 0]
            scale, zp = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)
            for i in range(n):
                x = decode(seg[i])
                xbuf[i] = x
                x64 = np.float64(x)
                sq[i] = x64 * x64
            rms = zero
            if weighting == MAGNITUDE:
                rms = magnitude_rms(sq, n, cell)
            sums[0], sums[3], sums[5] = _group_sums(xbuf, rms, weighting, n, wbuf, wxbuf)
            err = _score(xbuf, wbuf, wxbuf, qbuf, n, scale, zp, qmin, qmax, sums)
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
                new_err = _score(xbuf, wbuf, wxbuf, qbuf, n, new_scale, new_zp, qmin, qmax, sums)
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
