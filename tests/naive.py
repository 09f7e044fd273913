"""Slow, obviously-correct oracles, one home for all of them (stumpy's ``naive.py``).

Independent of both the kernels and the array-API reference (plain Python control flow,
NumPy float32 scalars), so a shared mistake in those two would show here:

* ``quant_tensor_int``: the integer formula one group at a time in float32;
* ``nearest_level``, ``quant_tensor_codebook``: the 4-bit codebooks' midpoint rule, one
  element at a time;
* ``quant_weight_w_scale_int``: quantization with given scales, one element at a time;
* ``torch_order_sum``: torch's float32 CPU sum order, transcribed item by item (the
  double-quant scale mean);
* ``clip_group_errors``, ``first_min``: the clip search as the reference runs it, one
  ``quant_tensor`` pass per candidate ratio;
* ``refit_int``: the least-squares refit, one group and one iteration at a time;
* ``refine_zero``, ``lp_pow``: HQQ's zero-point iterations, one element at a time.

``implementations.py`` lists them beside the kernels, reference twins and plain-torch
baselines of the same operations.
"""

import contextlib
import math

import numpy as np

import nbwoq
from nbwoq._layout import group_layout
from nbwoq._tables import ZERO_INDEX


def quant_tensor_int(w, bits, group_size, scheme, quantile=1.0, full_range=False):
    """Codes, scales and zero points of ``w`` (float32, 2-D); ``w`` is not modified.

    A group whose scale underflows to 0 gets NaN codes and zero point, as in the
    reference (no warning: it is the documented result)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _quant_tensor_int(w, bits, group_size, scheme, quantile, full_range)


def int_group_params(x, bits, scheme, quantile, full_range):
    """One group's round-to-nearest ``(scale, zp, qmin, qmax)`` in float32 (the
    reference's formula; ``x`` a float32 group)."""
    f = np.float32
    lo, hi = x.min(), x.max()
    if scheme == "asym":
        maxq = 2**bits - 1
        wmin = min(lo, f(0)) * f(quantile)
        wmax = max(hi, f(0)) * f(quantile)
        if wmin == 0 and wmax == 0:
            wmin, wmax = f(-1), f(1)
        scale = f(wmax - wmin) / f(maxq)
        return scale, np.rint(-wmin / scale), 0, maxq
    if bits == 1:
        qmin, qmax = 0, 1
    else:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    wmax = max(abs(hi), abs(lo)) * f(quantile)
    if wmax == 0:
        wmax = f(1)
    if full_range:
        scale = f(wmax) / f(2 ** (bits - 1))
        if abs(hi) > abs(lo):
            scale = -scale
    else:
        scale = f(wmax) / f(qmax)
    return scale, f(0), qmin, qmax


def _quant_tensor_int(w, bits, group_size, scheme, quantile, full_range):
    f = np.float32
    rows, cols = w.shape
    g = cols if group_size == -1 or group_size > cols else group_size
    starts = list(range(0, cols, g))
    codes = np.empty_like(w)
    scales = np.empty((rows, len(starts)), np.float32)
    zps = np.zeros((rows, len(starts)), np.float32)
    for r in range(rows):
        for k, s in enumerate(starts):
            x = w[r, s : s + g]
            scale, zp, qmin, qmax = int_group_params(x, bits, scheme, quantile, full_range)
            q = np.clip(np.rint(x / scale) + zp, f(qmin), f(qmax))
            codes[r, s : s + g] = q
            scales[r, k] = scale
            zps[r, k] = zp
    return codes, scales, zps


# --- 4-bit codebooks ---------------------------------------------------------------------


def nearest_level(v, mids):
    """Level index by the rule as written: 0 if v <= mid[0], i if mid[i-1] < v <= mid[i],
    last if v > mid[-1]; NaN (the reference's 0/0) is the level 0.0."""
    if np.isnan(v):
        return ZERO_INDEX
    for i, m in enumerate(mids):
        if v <= m:
            return i
    return len(mids)


def quant_tensor_codebook(w, group_size, dtype, quantile=1.0, return_int=False):
    """Codes or fake-quantized values, and scales, one element at a time (float32)."""
    f = np.float32
    levels = [f(x) for x in nbwoq.FLOAT_MAPPING[dtype]]
    codes = nbwoq.INT_MAPPING[dtype]
    mids = [f((a + b) / 2) for a, b in zip(nbwoq.FLOAT_MAPPING[dtype], nbwoq.FLOAT_MAPPING[dtype][1:])]
    rows, cols = w.shape
    g = cols if group_size == -1 or group_size > cols else group_size
    starts = list(range(0, cols, g))
    out = np.empty_like(w)
    scales = np.empty((rows, len(starts)), np.float32)
    for r in range(rows):
        for k, s0 in enumerate(starts):
            x = w[r, s0: s0 + g]
            scale = f(f(np.max(np.abs(x))) * f(quantile)) / f(max(nbwoq.FLOAT_MAPPING[dtype]))
            scales[r, k] = scale
            for c in range(x.size):
                with np.errstate(all="ignore"):
                    i = nearest_level(f(x[c]) / scale, mids)
                out[r, s0 + c] = codes[i] if return_int else f(levels[i] * scale)
    return out, scales


# --- given scales ------------------------------------------------------------------------


def quant_weight_w_scale_int(w, scale, zp, group_size, bits):
    """One element at a time, float32 scalars."""
    f = np.float32
    rows, cols = w.shape
    g = cols if group_size == -1 or group_size > cols else group_size
    out = np.empty_like(w)
    for r in range(rows):
        for c in range(cols):
            v = f(w[r, c]) / scale[r, c // g]
            if zp is not None:
                v = f(v + zp[r, c // g])
            code = np.rint(v)
            if bits is not None:
                lo, hi = (0, 2**bits - 1) if zp is not None else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                code = min(max(code, f(lo)), f(hi))
            out[r, c] = code
    return out


# --- the double-quant scale mean ---------------------------------------------------------


def torch_order_sum(x, lanes=8):
    """torch's single-threaded CPU float32 sum, transcribed item by item (SumKernel.cpp:
    vectorized_inner_sum -> row_sum -> multi_row_sum with its 4-level cascade)."""
    f = np.float32

    def multi_row_sum(rows, nrows):
        size = len(rows)
        power = max(4, (1 if size <= 2 else (size - 1).bit_length()) // 4)
        step, mask = 1 << power, (1 << power) - 1
        acc = [[np.zeros(lanes, f) for _ in range(nrows)] for _ in range(4)]
        i = 0
        while i + step <= size:
            for _ in range(step):
                for k in range(nrows):
                    acc[0][k] = acc[0][k] + rows[i][k]
                i += 1
            for j in range(1, 4):
                for k in range(nrows):
                    acc[j][k] = acc[j][k] + acc[j - 1][k]
                    acc[j - 1][k] = np.zeros(lanes, f)
                if i & (mask << (j * power)):
                    break
        while i < size:
            for k in range(nrows):
                acc[0][k] = acc[0][k] + rows[i][k]
            i += 1
        for j in range(1, 4):
            for k in range(nrows):
                acc[0][k] = acc[0][k] + acc[j][k]
        return acc[0]

    def row_sum(items):
        n = len(items) // 4
        sums = multi_row_sum([items[4 * i: 4 * i + 4] for i in range(n)], 4)
        for i in range(4 * n, len(items)):
            sums[0] = sums[0] + items[i]
        for k in range(1, 4):
            sums[0] = sums[0] + sums[k]
        return sums[0]

    n = x.size
    if n < lanes:
        lanes = 1
        return row_sum([x[i: i + 1] for i in range(n)])[0]
    vectors = n // lanes
    lane_sums = row_sum([x[lanes * i: lanes * (i + 1)] for i in range(vectors)])
    acc = f(0)
    for k in range(vectors * lanes, n):
        acc = f(acc + x[k])
    for k in range(lanes):
        acc = f(acc + lane_sums[k])
    return acc


# --- the clip search ---------------------------------------------------------------------


def compute_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def fake_quant(w, quantile, bits=4, group_size=32, scheme="asym", dtype="int", full_range=False):
    """``quant_tensor`` on a copy of ``w``: what search_clip scores."""
    return nbwoq.quant_tensor(w.copy(), bits=bits, group_size=group_size, scheme=scheme, quantile=quantile,
                              dtype=dtype, full_range=full_range)


@contextlib.contextmanager
def one_thread():
    """The oracle makes many tiny quant_tensor calls: on one thread they cost no thread
    wake-ups, which dominate on a loaded machine."""
    before = nbwoq.get_num_threads()
    nbwoq.set_num_threads(1)
    try:
        yield
    finally:
        nbwoq.set_num_threads(before)


def clip_group_errors(w, ratios, bits=4, group_size=32, scheme="asym", dtype="int", enable_full_range=False,
                       weighting=None):
    """(n_cand, rows, n_groups) float64 squared-error sums, one quant_tensor pass per ratio."""
    with one_thread():
        return _clip_group_errors(w, ratios, bits, group_size, scheme, dtype, enable_full_range, weighting)


def magnitude_weights(x, size):
    """``rms + |x|`` per element, ``rms`` each group's root mean square (float64 sums,
    rounded to ``x``'s dtype): the weights of ``weighting="magnitude"``, written plainly."""
    out = np.empty_like(x)
    for g0 in range(0, x.shape[1], size):
        seg = x[:, g0:g0 + size]
        rms = np.sqrt((seg.astype(np.float64) ** 2).sum(axis=1) / seg.shape[1]).astype(x.dtype)
        out[:, g0:g0 + size] = rms[:, None] + np.abs(seg)
    return out


def _clip_group_errors(w, ratios, bits, group_size, scheme, dtype, enable_full_range, weighting=None):
    rows, cols = w.shape
    size, n_groups = group_layout(cols, group_size)
    cdt = compute_dtype(w.dtype)
    x = w.astype(cdt)
    weights = magnitude_weights(x, size) if weighting == "magnitude" else None
    out = np.zeros((len(ratios), rows, n_groups))
    for k, ratio in enumerate(ratios):
        q = fake_quant(w, ratio, bits, group_size, scheme, dtype, enable_full_range).astype(cdt)
        d = x - q
        sq = (d * d if weights is None else d * d * weights).astype(np.float64)
        for g in range(n_groups):
            out[k, :, g] = sq[:, g * size:(g + 1) * size].sum(axis=1)
    return out


def first_min(values):
    best, low = 0, np.inf
    for k, v in enumerate(values):
        if v < low:
            best, low = k, v
    return best


# --- the least-squares refit (refit_int) ----------------------------------------------------
# Sums are float64 in the order the kernel and the reference promise (element ``i`` into
# lane ``i % 4``), and the error is expanded over them as they do, so codes, scales and
# zero points match exactly. Float32 weights (compute type float32).

f32 = np.float32
f64 = np.float64


def _refit_code(x, scale, zp, qmin, qmax):
    return f32(min(max(f32(np.rint(x / scale)) + zp, f32(qmin)), f32(qmax)))


def _lane_sum(values):
    """Element ``i`` into lane ``i % 4``; lanes added as ``(l0 + l1) + (l2 + l3)``."""
    lanes = [f64(0)] * 4
    for i, v in enumerate(values):
        lanes[i % 4] += f64(v)
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])


def _score(x, w64, a, d, f, scale, zp, qmin, qmax):
    qs = [f64(_refit_code(xi, scale, zp, qmin, qmax)) for xi in x]
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
            scale, zp, qmin, qmax = int_group_params(x, bits, scheme, q, full_range)
            scale, zp = f32(scale), f32(zp)
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
            codes[r, s:s + g] = [_refit_code(xi, scale, zp, qmin, qmax) for xi in x]
    return codes, scales, zps


# --- the HQQ-style zero-point refinement (refine_zero) ----------------------------------------
# Python floats (float64) one element at a time; ``lp_pow`` is the documented series
# (frexp, log series in t = (m - 1) / (m + 1), exp series, ldexp), sums in the lane order.

_LN2 = 0.6931471805599453


def lp_pow(a, y):
    """``a ** y`` for a finite ``a > 0``, by the series ``refine_zero`` promises."""
    m, e = math.frexp(a)
    m, k = m * 2.0, e - 1
    if m >= 1.4142135623730951:
        m, k = m * 0.5, k + 1
    t = (m - 1.0) / (m + 1.0)
    poly = 0.0
    for j in range(19, 0, -2):
        poly = poly * (t * t) + 1.0 / j
    u = y * (float(k) * _LN2 + (2.0 * t) * poly)
    n = round(u * 1.4426950408889634)  # Python's round: half to even
    r = u - n * _LN2
    ex = 0.0
    for j in range(13, -1, -1):
        ex = ex * r + 1.0 / math.factorial(j)
    try:
        return math.ldexp(ex, n)
    except OverflowError:  # IEEE's ldexp gives inf
        return math.inf


def _lp_error(x, wts, scale, zp, qmin, qmax, p):
    terms = []
    for xi, wi in zip(x, wts):
        value = f32((_refit_code(xi, scale, zp, qmin, qmax) - zp) * scale)
        v = abs(float(xi) - float(value))
        terms.append(wi * lp_pow(v, p) if v > 0 else wi * v)
    return _lane_sum(terms)


def _cut(b, p):
    try:
        return b ** (-1.0 / (2.0 - p)) * (1.0 - 1e-6)
    except OverflowError:  # a tiny beta: no residual reaches HQQ's threshold
        return math.inf


def refine_zero(w, bits=4, p=0.7, beta=10.0, kappa=1.01, iterations=20, group_size=128, weighting=None,
                quantile=1.0):
    """Codes, scales and zero points of ``w`` (float32, 2-D, finite); ``w`` is not modified."""
    rows, cols = w.shape
    g = cols if group_size == -1 or group_size > cols else group_size
    starts = list(range(0, cols, g))
    codes = np.empty_like(w)
    scales = np.empty((rows, len(starts)), np.float32)
    zps = np.empty((rows, len(starts)), np.float32)
    betas = [beta * 1.0]
    for _ in range(iterations - 1):
        betas.append(betas[-1] * kappa)
    cuts = [_cut(b, p) for b in betas]
    for r in range(rows):
        for k, s in enumerate(starts):
            x = w[r, s:s + g]
            q0 = quantile if np.ndim(quantile) == 0 else quantile[r, k]
            scale, zp, qmin, qmax = int_group_params(x, bits, "asym", q0, False)
            scale, zp = f32(scale), f32(zp)
            if weighting == "magnitude":
                rms = f32(math.sqrt(_lane_sum([float(xi) * float(xi) for xi in x]) / len(x)))
                wts = [float(f32(rms + abs(xi))) for xi in x]
            else:
                wts = [1.0] * len(x)
            sc = float(scale)
            z = z_best = float(zp)
            best = math.inf
            for it in range(iterations):
                qs = [min(max(float(np.rint(float(xi) / sc + z)), qmin), qmax) for xi in x]
                vs = [float(xi) - (q - z) * sc for xi, q in zip(x, qs)]
                err = _lane_sum([wi * abs(v) for wi, v in zip(wts, vs)])
                if not err < best:
                    z = z_best
                    break
                best, z_best = err, z
                terms = []
                for xi, q, v in zip(x, qs, vs):
                    e = 0.0
                    if abs(v) > cuts[it]:
                        e = max(abs(v) - lp_pow(abs(v), p - 1.0) / betas[it], 0.0)
                        e = e if v > 0 else -e
                    terms.append(q - (float(xi) - e) / sc)
                z = _lane_sum(terms) / len(x)
            if iterations:
                new_zp = f32(min(max(float(np.rint(z)), qmin), qmax))
                if new_zp != zp and (_lp_error(x, wts, scale, new_zp, qmin, qmax, p)
                                     < _lp_error(x, wts, scale, zp, qmin, qmax, p)):
                    zp = new_zp
            scales[r, k], zps[r, k] = scale, zp
            codes[r, s:s + g] = [_refit_code(xi, scale, zp, qmin, qmax) for xi in x]
    return codes, scales, zps


# --- the dual-axis scale search (dual_scale) -----------------------------------------------
# The fold and the quantization are the public ones (fold_column_scale, quant_tensor), one
# call per candidate; the Sinkhorn factor is written out with NumPy's own std.


def sinkhorn_factor(m, iterations, floor=1e-6, spread=1e3):
    """SINQ's column factor of float64 ``m`` (rows, cols), the plain way."""
    def std(a, axis):
        s = a.std(axis=axis)
        top = s.max()
        low = top * floor if top > 0 else 1.0
        return np.where(s > low, s, low)

    mu_c, mu_r = np.ones(m.shape[1]), np.ones(m.shape[0])
    best, best_c = None, mu_c
    for step in range(iterations + 1):
        if step:
            mu_c = mu_c * std(m / mu_r[:, None] / mu_c, 0)
            mu_r = mu_r * std(m / mu_r[:, None] / mu_c, 1)
        cur = m / mu_r[:, None] / mu_c
        sc, sr = std(cur, 0), std(cur, 1)
        imbalance = max(sc.max(), sr.max()) / min(sc.min(), sr.min())
        if best is not None and not imbalance < best:
            break
        converged = best is not None and imbalance > best * (1 - 1e-4)
        best, best_c = imbalance, mu_c
        if converged:
            break
    return normalized(best_c, spread)


def normalized(mu, spread=1e3):
    """``mu`` over the power of two nearest its geometric mean (a tie: the upper one),
    clipped to ``spread`` of 1."""
    mu = mu * 2.0 ** -np.floor(np.log2(mu).mean() + 0.5)
    return np.clip(mu, 1 / spread, spread)


def dual_group_errors(w, scales, bits=4, group_size=128, scheme="asym", full_range=False, weighting="magnitude",
                      column_weights=None):
    """(n_cand, n_groups) float64: per column group, the weighted squared error over all
    rows of ``w`` (float32 or float64) folded with each row of ``scales`` (consumer
    columns), quantized by ``quant_tensor`` and multiplied back; each element's weight
    times its column's ``column_weights`` if given."""
    rows, cols = w.shape
    size, n_groups = group_layout(cols, group_size)
    group = nbwoq.AbsorbGroup("feeder", "norm", ("w",))
    weights = magnitude_weights(w, size).astype(np.float64) if weighting == "magnitude" else np.ones(w.shape)
    if column_weights is not None:
        weights = weights * column_weights
    out = np.zeros((len(scales), n_groups))
    for k, s in enumerate(scales):
        _, (folded,), _ = nbwoq.fold_column_scale(group, s, np.ones(cols, w.dtype), [w])
        deq = nbwoq.quant_tensor(folded, bits=bits, group_size=group_size, scheme=scheme, full_range=full_range)
        d = w.astype(np.float64) - deq.astype(np.float64) * s
        e = weights * d * d
        for g in range(n_groups):
            out[k, g] = e[:, g * size:(g + 1) * size].sum()
    return out
