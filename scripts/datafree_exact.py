"""Exact per-group scale search for ``datafree_methods.py`` (research prototype, not core).

For fixed integer bounds ``lo <= q <= hi`` and a per-element weight ``w``, the weighted
error of a scale ``d > 0``,

    E(d) = sum_i w_i (x_i - d * clamp(round(x_i / d), lo, hi)) ** 2,

is continuous and piecewise quadratic in ``d``: the codes change only where some
``x_i / d`` crosses a half-integer. Walking the breakpoints in order and keeping the
running sums ``sum w x q`` and ``sum w q q`` gives each piece's least-squares optimum in
O(1), so the global minimum over ``[dlo, dhi]`` costs one sort per group. The scale is
then rounded to float16 (down and up, codes decided again) where the format stores
float16, and round-to-nearest's own parameters are kept whenever they are no worse.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _err(x, w, d, lo, hi):
    e = 0.0
    for i in range(x.shape[0]):
        q = np.rint(x[i] / d)
        q = min(max(q, lo), hi)
        r = x[i] - d * q
        e += w[i] * r * r
    return e


@njit(cache=True)
def _f16_pair(d):
    """The float16 values just below and above ``d > 0`` (normal range; subnormal step)."""
    e = np.floor(np.log2(d))
    e = max(e, -14.0)
    ulp = 2.0 ** (e - 10.0)
    down = np.floor(d / ulp) * ulp
    return down, down + ulp


@njit(cache=True)
def _f16(d):
    """``d`` rounded to the nearest float16 (sign kept)."""
    a, b = _f16_pair(abs(d))
    r = a if abs(d) - a <= b - abs(d) else b
    return r if d >= 0 else -r


@njit(cache=True)
def _best_scale(x, w, lo, hi, dlo, dhi, bp, dq):
    """Minimum of E(d) over d in [dlo, dhi] (float64); returns (d, E)."""
    n = x.shape[0]
    m = 0
    sxx = 0.0
    sxq = 0.0
    sqq = 0.0
    for i in range(n):
        xi = x[i]
        q = min(max(np.rint(xi / dhi), lo), hi)
        sxx += w[i] * xi * xi
        sxq += w[i] * xi * q
        sqq += w[i] * q * q
        # as d falls below |x| / (k + 0.5) the code moves one step away from zero
        a = abs(xi)
        if a == 0.0:
            continue
        top = hi if xi > 0 else -lo
        for k in range(int(abs(q)), int(top)):
            b = a / (k + 0.5)
            if b <= dlo:
                break
            if b < dhi:
                bp[m] = b
                dq[m] = (i * 64 + k) * (1 if xi > 0 else -1) + (0 if xi > 0 else -1)
                m += 1
    order = np.argsort(-bp[:m])
    best_d = dhi
    best_e = sxx - 2 * dhi * sxq + dhi * dhi * sqq
    upper = dhi
    for j in range(m + 1):
        lower = bp[order[j]] if j < m else dlo
        if sqq > 0:
            d = min(max(sxq / sqq, lower), upper)
        else:
            d = upper
        e = sxx - 2 * d * sxq + d * d * sqq
        if e < best_e:
            best_e = e
            best_d = d
        if j < m:
            code = dq[order[j]]
            step = 1.0 if code >= 0 else -1.0
            code = code if code >= 0 else -code - 1
            i = code // 64
            k = code % 64  # the code's distance from zero just above the breakpoint
            sxq += w[i] * x[i] * step
            sqq += w[i] * (2 * k + 1)
        upper = lower
    return best_d, best_e


@njit(parallel=True, cache=True)
def exact_sym(xg, wg, lo, hi, lo_ratio, hi_ratio, scale16, s_out):
    """Sign-free scale per group (rows of ``xg``) for codes in [lo, hi]: both the scale
    ``d`` and ``-d`` (the mirrored range) are searched; ``s_out`` gets the signed scale."""
    groups, n = xg.shape
    for g in prange(groups):
        x = xg[g].astype(np.float64)
        xm = -x
        w = wg[g]
        bp = np.empty(n * (hi - lo + 2), dtype=np.float64)
        dq = np.empty(n * (hi - lo + 2), dtype=np.int64)
        amax = 0.0
        for i in range(n):
            amax = max(amax, abs(x[i]))
        if amax == 0.0:
            s_out[g] = 1.0
            continue
        # round-to-nearest (Q4_0): the signed extreme maps to lo
        ext = 0.0
        for i in range(n):
            if abs(x[i]) > abs(ext):
                ext = x[i]
        d0 = ext / lo
        if scale16:
            d0 = _f16(d0)
        base = min(abs(d0), amax)
        cands = np.empty(8)
        signs = np.empty(8)
        c = 0
        for sgn in (1.0, -1.0):
            xs = x if sgn > 0 else xm
            d, e = _best_scale(xs, w, lo, hi, base * lo_ratio, base * hi_ratio, bp, dq)
            if scale16:
                a, b = _f16_pair(d)
                cands[c] = a
                signs[c] = sgn
                cands[c + 1] = b
                signs[c + 1] = sgn
                c += 2
            else:
                cands[c] = d
                signs[c] = sgn
                c += 1
        best = d0
        best_e = _err(x, w, d0, lo, hi)
        for j in range(c):
            d = cands[j] * signs[j]
            if d == 0.0:
                continue
            e = _err(x, w, d, lo, hi)
            if e < best_e:
                best_e = e
                best = d
        s_out[g] = best


@njit(parallel=True, cache=True)
def exact_asym(xg, wg, qmax, z_radius, lo_ratio, hi_ratio, s_out, z_out):
    """Scale and integer zero point per group, codes in [0, qmax]: for each zero point
    within ``z_radius`` of round-to-nearest's, the exact best scale in the ratio window
    around round-to-nearest's scale; the pair with the least weighted error wins."""
    groups, n = xg.shape
    for g in prange(groups):
        x = xg[g].astype(np.float64)
        w = wg[g]
        bp = np.empty(n * (qmax + 2), dtype=np.float64)
        dq = np.empty(n * (qmax + 2), dtype=np.int64)
        xlo = min(x.min(), 0.0)
        xhi = max(x.max(), 0.0)
        if xlo == 0.0 and xhi == 0.0:
            xlo, xhi = -1.0, 1.0
        s0 = np.float64(np.float32((np.float32(xhi) - np.float32(xlo)) / np.float32(qmax)))
        z0 = np.rint(-xlo / s0)
        best_s = s0
        best_z = z0
        # error of (s, z): codes clamp(round(x/s) + z, 0, qmax) == z + clamp(round(x/s), -z, qmax - z)
        best_e = _err(x, w, s0, -z0, qmax - z0)
        for dz in range(-z_radius, z_radius + 1):
            z = z0 + dz
            if z < 0 or z > qmax:
                continue
            d, e = _best_scale(x, w, -z, qmax - z, s0 * lo_ratio, s0 * hi_ratio, bp, dq)
            d = np.float64(np.float32(d))
            e = _err(x, w, d, -z, qmax - z)
            if e < best_e:
                best_e = e
                best_s = d
                best_z = z
        s_out[g] = best_s
        z_out[g] = best_z
