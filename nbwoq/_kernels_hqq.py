"""Numba kernel for the HQQ-style zero-point refinement (``nbwoq.refine_zero``).

Per group, the scale stays round-to-nearest's and a continuous zero point ``z`` follows
HQQ's half-quadratic splitting of ``sum |x - (q - z) s|**p``: codes ``q = clamp(round(x /
s + z))``, residual ``v = x - (q - z) s``, sparse error ``e = shrink_lp(v, beta)``, then
``z = mean(q - (x - e) / s)`` and ``beta *= kappa``; HQQ's early stop (the first time the
L1 error ``sum w |v|`` does not fall, the previous ``z`` is kept). The final ``z`` is
rounded to an integer zero point, and the group keeps it only when it lowers the group's
lp error ``sum w |x - (code - zp) * scale|**p`` against round-to-nearest's.

Determinism: all of it runs in float64 with fastmath off, every sum in the lane order of
``_kernels_lanes`` (element ``i`` into lane ``i % 4``). ``|v|**y`` is ``lp_pow``, written
with additions, multiplications, one division and exact power-of-two scaling only: libm's
and NumPy's ``pow`` (NumPy has its own SIMD ``power`` on AVX-512) may differ in the last
bit, and a last bit can move a rounded zero point. The array-API twin
``_reference_hqq`` repeats every operation, so both give the same bits.
"""

import math

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._kernels_int import group_minmax, int_code, int_group_params
from nbwoq._kernels_lanes import MAGNITUDE, element_weight, lane_sum, magnitude_rms
from nbwoq._llvm import roundeven

LN2 = 0.6931471805599453
INV_LN2 = 1.4426950408889634
SQRT2 = 1.4142135623730951
#: ``log(m) = 2 t (1 + t**2 / 3 + t**4 / 5 + ...)``, ``t = (m - 1) / (m + 1)``, for
#: ``m`` in ``[sqrt(1/2), sqrt(2))`` (``|t| < 0.172``): ten terms, Horner order.
LOG_TERMS = tuple(1.0 / k for k in range(19, 0, -2))
#: ``exp(r) = sum r**k / k!`` for ``|r| <= log(2) / 2``: fourteen terms, Horner order.
EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))


@register_jitable
def lp_pow(a, y):
    """``a ** y`` for finite ``a > 0`` (float64) and ``|y| <= 1``, to about 1e-15
    relative, from operations every IEEE implementation rounds alike: ``a = m 2**k``
    (``frexp``, exact), ``log(m)`` and ``exp`` by the series above, ``2**n`` by ``ldexp``
    (exact, or one correct rounding when the result is subnormal)."""
    m, e = math.frexp(a)
    m = m * 2.0
    k = e - 1
    if m >= SQRT2:
        m = m * 0.5
        k = k + 1
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    poly = 0.0
    for c in LOG_TERMS:
        poly = poly * t2 + c
    u = y * (np.float64(k) * LN2 + (2.0 * t) * poly)
    n = roundeven(u * INV_LN2)
    r = u - n * LN2
    ex = 0.0
    for c in EXP_TERMS:
        ex = ex * r + c
    return math.ldexp(ex, int(n))


@register_jitable
def lp_error(xbuf, wbuf, n, scale, zp, qmin, qmax, p, tbuf):
    """``sum(w |x - (code - zp) * scale|**p)`` in float64; the fake-quantized value
    ``(code - zp) * scale`` is formed in the compute type, as it is stored."""
    for i in range(n):
        x = xbuf[i]
        v = abs(np.float64(x) - np.float64((int_code(x, scale, zp, qmin, qmax) - zp) * scale))
        tbuf[i] = wbuf[i] * lp_pow(v, p) if v > 0 else wbuf[i] * v  # 0, or NaN stays NaN
    return lane_sum(tbuf, n)


@register_jitable
def refine_group(xbuf, wbuf, xs, qbuf, vbuf, tbuf, n, scale, zp, qmin, qmax, p, betas, cuts, iterations):
    """The continuous zero point after HQQ's iterations (float64), started at ``zp``.

    ``xs`` holds ``x / s`` (float64). ``betas[k]`` is ``beta * kappa**k``; an element
    with ``|v| <= cuts[k]`` (below HQQ's shrink threshold ``beta**(-1 / (2 - p))``, with
    a margin) has ``e = 0`` without a ``pow``; the rest ``sign(v) * max(|v| - |v|**(p -
    1) / beta, 0)``."""
    s64 = np.float64(scale)
    lo = np.float64(qmin)
    hi = np.float64(qmax)
    z = np.float64(zp)
    z_best = z
    best = np.inf
    for k in range(iterations):
        for i in range(n):
            q = roundeven(xs[i] + z)
            q = lo if q < lo else q
            q = hi if q > hi else q
            v = np.float64(xbuf[i]) - (q - z) * s64
            qbuf[i] = q
            vbuf[i] = v
            tbuf[i] = wbuf[i] * abs(v)
        err = lane_sum(tbuf, n)
        if not (err < best):  # HQQ's early stop (tol 0): back to the last zero that helped
            z = z_best
            break
        best = err
        z_best = z
        beta = betas[k]
        cut = cuts[k]
        for i in range(n):
            v = vbuf[i]
            a = abs(v)
            if a <= cut:
                tbuf[i] = qbuf[i] - xs[i]
            else:
                d = a - lp_pow(a, p - 1.0) / beta
                d = d if d > 0 else 0.0
                e = d if v > 0 else -d
                tbuf[i] = qbuf[i] - (np.float64(xbuf[i]) - e) / s64
        z = lane_sum(tbuf, n) / n
    return z


@njit_kernel
def refine_zero(w, size, n_groups, quantile, qmin, qmax, divisor, weighting, p, betas, cuts, iterations,
                store_values, scale_out, zp_out):
    """Refine every group's zero point of ``w`` (asym) and write its codes (or, with
    ``store_values``, the fake-quantized values) in place; scales and zero points into
    ``scale_out`` and ``zp_out`` (rows, n_groups), in the compute type. ``quantile`` is
    (1, 1) or (rows, n_groups). Rows in parallel, groups of a row in order."""
    rows, cols = w.shape
    zero = divisor - divisor
    one = divisor / divisor
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    for r in prange(rows):
        cell = np.empty(1, dtype=scale_out.dtype)
        xbuf = np.empty(size, dtype=scale_out.dtype)
        wbuf = np.empty(size, dtype=np.float64)
        xs = np.empty(size, dtype=np.float64)
        qbuf = np.empty(size, dtype=np.float64)
        vbuf = np.empty(size, dtype=np.float64)
        tbuf = np.empty(size, dtype=np.float64)
        for g in range(n_groups):
            start = g * size
            seg = w[r, start:min(start + size, cols)]
            n = seg.shape[0]
            lo, hi = group_minmax(seg, False)
            q = quantile[r, g] if per_group else quantile[0, 0]
            scale, zp = int_group_params(lo, hi, q, divisor, False, False, zero, one)
            s64 = np.float64(scale)
            for i in range(n):
                x = decode(seg[i])
                xbuf[i] = x
                x64 = np.float64(x)
                xs[i] = x64 / s64
                tbuf[i] = x64 * x64
            rms = zero
            if weighting == MAGNITUDE:
                rms = magnitude_rms(tbuf, n, cell)
            for i in range(n):
                wbuf[i] = element_weight(rms, xbuf[i], weighting)
            if iterations > 0:
                z = refine_group(xbuf, wbuf, xs, qbuf, vbuf, tbuf, n, scale, zp, qmin, qmax, p, betas, cuts,
                                 iterations)
                z = roundeven(z)
                z = np.float64(qmin) if z < qmin else z
                z = np.float64(qmax) if z > qmax else z
                cell[0] = z  # a whole number in [qmin, qmax] (or NaN): exact
                new_zp = cell[0]
                if new_zp != zp:
                    before = lp_error(xbuf, wbuf, n, scale, zp, qmin, qmax, p, tbuf)
                    after = lp_error(xbuf, wbuf, n, scale, new_zp, qmin, qmax, p, tbuf)
                    if after < before:
                        zp = new_zp
            scale_out[r, g] = scale
            zp_out[r, g] = zp
            if store_values:
                for i in range(n):
                    code = int_code(xbuf[i], scale, zp, qmin, qmax)
                    seg[i] = encode((code - zp) * scale, w)
            else:
                for i in range(n):
                    seg[i] = encode(int_code(xbuf[i], scale, zp, qmin, qmax), w)
