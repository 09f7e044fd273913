"""Slow, obviously-correct loops for ``refit_int``: one group at a time, Python control flow.

A file of its own (not ``tests/naive.py``, which others edit). The sums are float64 in
the order the kernel and the reference promise (element ``i`` into lane ``i % 4``), and
the error is expanded over them as they do, so codes, scales and zero points must match
exactly. Float32 weights (compute type float32).
"""

import math

import numpy as np

f32 = np.float32
f64 = np.float64


def _params(x, bits, sym, full_range, quantile):
    lo, hi = x.min(), x.max()
    if sym:
        qmax = 2 ** (bits - 1) - 1
        qmin, div = (0, 1) if bits == 1 else (-(2 ** (bits - 1)), f32(2 ** (bits - 1) if full_range else qmax))
        if bits == 1:
            qmax, div = 1, f32(1)
        wmax = max(abs(hi), abs(lo)) * f32(quantile)
        if wmax == 0:
            wmax = f32(1)
        scale = f32(wmax / div)
        if full_range and abs(hi) > abs(lo):
            scale = -scale
        return scale, f32(0), qmin, qmax
    qmax = 2**bits - 1
    wmin = min(lo, f32(0)) * f32(quantile)
    wmax = max(hi, f32(0)) * f32(quantile)
    if wmin == 0 and wmax == 0:
        wmin, wmax = f32(-1), f32(1)
    scale = f32((wmax - wmin) / f32(qmax))
    return scale, f32(np.rint(-wmin / scale)), 0, qmax


def _code(x, scale, zp, qmin, qmax):
    return f32(min(max(f32(np.rint(x / scale)) + zp, f32(qmin)), f32(qmax)))


def _lane_sum(values):
    """Element ``i`` into lane ``i % 4``; lanes added as ``(l0 + l1) + (l2 + l3)``."""
    lanes = [f64(0)] * 4
    for i, v in enumerate(values):
        lanes[i % 4] += f64(v)
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])


def _score(x, w64, a, d, f, scale, zp, qmin, qmax):
    qs = [f64(_code(xi, scale, zp, qmin, qmax)) for xi in x]
    b = _lane_sum([wi * q for wi, q in zip(w64, qs)])
    c = _lane_sum([(wi * q) * q for wi, q in zip(w64, qs)])
    e = _lane_sum([(wi * f64(xi)) * q for wi, xi, q in zip(w64, x, qs)])
    s, z = f64(scale), f64(zp)
    err = f - (2 * s) * (e - z * d) + (s * s) * (c - (2 * z) * b + (z * z) * a)
    return err, (a, b, c, d, e)


def _fit(sums, zp, qmin, qmax, sym):
    a, b, c, d, e = sums
    if sym:
        return (e / c, 0.0) if c > 0 else None
    candidates = [float(zp)]
    det = a * c - b * b
    if det > 0:
        s_c = (a * e - b * d) / det
        m_c = (c * d - b * e) / det
        if s_c > 0:
            z_lo = math.floor(-m_c / s_c)
            candidates += [min(max(z_lo + k, qmin), qmax) for k in (0, 1)]
    best = None
    for z in candidates:
        z = f64(z)
        num = e - z * d
        den = c - (2 * z) * b + (z * z) * a
        if den > 0 and num > 0:
            gain = num * num / den
            if best is None or gain > best[0]:
                best = (gain, num / den, z)
    return None if best is None else best[1:]


def refit_int(w, bits=4, group_size=128, scheme="asym", full_range=False, weighting="magnitude", iterations=4,
              quantile=1.0):
    """Codes, scales and zero points of ``w`` (float32, 2-D, finite); ``w`` is not modified."""
    rows, cols = w.shape
    g = cols if group_size == -1 or group_size > cols else group_size
    starts = list(range(0, cols, g))
    codes = np.empty_like(w)
    scales = np.empty((rows, len(starts)), np.float32)
    zps = np.zeros((rows, len(starts)), np.float32)
    sym = scheme == "sym"
    for r in range(rows):
        for k, s in enumerate(starts):
            x = w[r, s:s + g]
            q = quantile if np.ndim(quantile) == 0 else quantile[r, k]
            scale, zp, qmin, qmax = _params(x, bits, sym, full_range, q)
            if weighting == "magnitude":
                rms = f32(math.sqrt(_lane_sum([f64(xi) * f64(xi) for xi in x]) / len(x)))
                w64 = [f64(f32(rms + abs(xi))) for xi in x]
            else:
                w64 = [f64(1)] * len(x)
            a = _lane_sum(w64)
            d = _lane_sum([wi * f64(xi) for wi, xi in zip(w64, x)])
            f = _lane_sum([(wi * f64(xi)) * f64(xi) for wi, xi in zip(w64, x)])
            err, sums = _score(x, w64, a, d, f, scale, zp, qmin, qmax)
            for _ in range(iterations):
                fitted = _fit(sums, zp, qmin, qmax, sym)
                if fitted is None:
                    break
                new_scale, new_zp = f32(fitted[0]), f32(fitted[1])
                if new_scale == 0 or (new_scale == scale and new_zp == zp):
                    break
                new_err, new_sums = _score(x, w64, a, d, f, new_scale, new_zp, qmin, qmax)
                if not new_err < err:
                    break
                scale, zp, err, sums = new_scale, new_zp, new_err, new_sums
            scales[r, k], zps[r, k] = scale, zp
            codes[r, s:s + g] = [_code(xi, scale, zp, qmin, qmax) for xi in x]
    return codes, scales, zps
