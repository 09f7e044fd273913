"""nbwoq's search encoder of GGML blocks: the Numba kernel ``search_blocks``, which
improves blocks the reference encoder wrote, in place, in the same bytes layout.

Every block starts from llama.cpp's data-free result (``_ggml_rows.encode_blocks``) and
keeps a change only when the block's weighted squared error goes down, so no block is
ever worse than the reference by that measure. The error is measured on the values as
llama.cpp decodes them (float32, its order), weighted as the reference's own search
weighs them (``block_weights``).

The search alternates, a few rounds per block:

* K-quants (Q4_K, Q5_K, Q6_K; ``_ggml_search_k``): with the codes and the sub-block
  integers fixed, refit the fp16 super-scale(s) by weighted least squares and round the
  fit to fp16 (Q6_K: and its two neighbours); for each, give every sub-block the best
  integer scale (and min) among the neighbours of its own least-squares fit and its
  current one, with codes re-chosen for the candidate's stored values.
* legacy blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): a grid of trial scales around
  the reference's (the extreme value at either end of the code range, for the
  symmetric types), each refit by weighted least squares on its codes and rounded to
  fp16, the best of them kept, then the same alternation.

``_ggml_search_reference`` is the slow twin; the tests compare the two byte for byte.
Sums are float64 and walk the values in order (``ordered_sum``), so both give the same bits.
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._config import njit_kernel
from nbwoq.formats._ggml_search_common import (BB, BV, KIND, Q4_0, Q4_1, Q5_0, Q5_1, Q6_K, Q4_K, Q5_K, Q8_0,  # noqa: F401
                                               block_weights, h2f, half_near, ordered_sum, put_half_bits, round_clamp)
from nbwoq.formats._ggml_search_k import search_q6, search_qk

#: Types the search improves (every other type keeps the reference's bytes).
SEARCHED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
#: Rounds of the alternation per block; trial scales per side of a legacy block.
ROUNDS = 3
LEGACY_TRIALS = 4


# -- legacy blocks of 32 -----------------------------------------------------------------
@register_jitable
def _legacy_layout(kind):
    """(lowest code, highest code, has a min, offset of qh or -1, offset of qs) of ``kind``;
    a code is the stored value's multiple of ``d`` (Q4_0 stores ``code + 8``, ...)."""
    if kind == Q4_0:
        return -8, 7, False, -1, 2
    if kind == Q5_0:
        return -16, 15, False, 2, 6
    if kind == Q4_1:
        return 0, 15, True, -1, 4
    if kind == Q5_1:
        return 0, 31, True, 4, 8
    return -128, 127, False, -1, 2  # Q8_0


@register_jitable
def _legacy_err(x, w, d, m, asym, lo, hi, L, keep, tmp):
    """Weighted error of the block stored as ``q * d (+ m)`` (float32); ``keep``: with the
    codes in ``L``, else the nearest codes, written to ``L``."""
    inv = 0.0 if d == np.float32(0) else 1.0 / np.float64(d)
    m64 = np.float64(m)
    for k in range(32):
        if not keep:
            L[k] = round_clamp((np.float64(x[k]) - m64) * inv, lo, hi)
        y = np.float32(L[k]) * d + m if asym else np.float32(L[k]) * d
        diff = np.float64(x[k]) - np.float64(y)
        tmp[k] = w[k] * diff * diff
    return ordered_sum(tmp, 32)


@register_jitable
def _legacy_fit(x, w, L, asym, m, sw, sx, d0, m0, lo, hi, tmp):
    """Weighted least-squares ``(d, m)`` of ``x ~ L d + m`` (``m`` kept when not ``asym``
    or degenerate; NaN ``d`` when every code is 0). With ``d0`` non-zero, the codes are
    first set to the nearest of ``x ~ L d0 + m0`` in ``[lo, hi]``. ``sw``/``sx``: sums of
    ``w``, ``w x``."""
    inv = 0.0 if d0 == 0.0 else 1.0 / d0
    recode = d0 != 0.0
    for k in range(32):
        v = np.float64(x[k])
        if recode:
            L[k] = round_clamp((v - m0) * inv, lo, hi)
        q = np.float64(L[k])
        tmp[k] = w[k] * q
        tmp[32 + k] = w[k] * q * q
        tmp[64 + k] = w[k] * v * q
    sl = ordered_sum(tmp, 32)
    sll = ordered_sum(tmp[32:], 32)
    sxl = ordered_sum(tmp[64:], 32)
    d = np.nan
    if asym:
        det = sw * sll - sl * sl
        if det > 0.0:
            d = (sw * sxl - sl * sx) / det
            m = (sx - d * sl) / sw
    else:
        m = 0.0
    if not (d == d) and sll > 0.0:
        d = (sxl - m * sl) / sll
    return d, m


@register_jitable
def _legacy_try(x, w, fd, fm, asym, lo, hi, near, T, best, Lbest, tmp):
    """Try the fp16 values within ``near`` steps of ``(fd, fm)``; the best below ``best``
    goes to ``Lbest``. Returns (error, d bits, m bits), bits -1 when none was better."""
    rd = -1
    rm = -1
    for kd in range(-near, near + 1):
        cdh = half_near(fd, kd)
        if cdh < 0:
            continue
        cd = h2f(cdh)
        if cd == np.float32(0):
            continue
        for km in range(-near if asym else 0, near + 1 if asym else 1):
            cmh = half_near(fm, km) if asym else np.int64(0)
            if cmh < 0:
                continue
            e = _legacy_err(x, w, cd, h2f(cmh), asym, lo, hi, T, False, tmp)
            if e < best:
                best = e
                rd = cdh
                rm = cmh
                for k in range(32):
                    Lbest[k] = T[k]
    return best, rd, rm


@register_jitable
def _search_legacy(x, w, o, kind, rounds, trials, L, T, B, tmp):
    """Improve one legacy block ``o`` in place; returns (reference error, final error)."""
    lo, hi, asym, qh_at, qs_at = _legacy_layout(kind)
    hd = np.int64(o[0]) | (np.int64(o[1]) << 8)
    hm = np.int64(o[2]) | (np.int64(o[3]) << 8) if asym else np.int64(0)
    if kind == Q8_0:
        for k in range(32):
            L[k] = ((np.int64(o[2 + k]) & 255) ^ 128) - 128
    else:
        qh = np.int64(0)
        if qh_at >= 0:
            for k in range(4):
                qh |= np.int64(o[qh_at + k]) << (8 * k)
        for j in range(16):
            b = np.int64(o[qs_at + j])
            L[j] = (b & 15) | (((qh >> j) & 1) << 4)
            L[j + 16] = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
        if not asym:
            for k in range(32):
                L[k] += lo
    d = h2f(hd)
    m = h2f(hm) if asym else np.float32(0)
    e_ref = _legacy_err(x, w, d, m, asym, lo, hi, L, True, tmp)
    best = e_ref
    changed = False
    for k in range(32):
        tmp[k] = w[k] * np.float64(x[k])
    sw = ordered_sum(w, 32)
    sx = ordered_sum(tmp, 32)
    vmin = np.float64(x[0])
    vmax = np.float64(x[0])
    mx = np.float64(x[0])
    for k in range(32):
        v = np.float64(x[k])
        vmin = min(vmin, v)
        vmax = max(vmax, v)
        if abs(v) > abs(mx):
            mx = v
    # trial scales: the block's extreme value at (about) either end of the code range,
    # each refit on its codes and rounded to fp16. Every fit is tried as stored: ranking
    # the fits by their unrounded error first is 1.3x faster but lost SmolLM2-135M's
    # Q4_K_M perplexity gain over llama-quantize (7.9511 vs 7.9387 on topics.py).
    if vmax > vmin and best > 0.0:
        for t in range(2 * trials if not asym else trials):
            step = 0.5 * np.float64(t // 2 if not asym else t) - 0.5
            if asym:
                d0 = (vmax - vmin) / (np.float64(hi) - step)
                m0 = vmin
            else:
                d0 = mx / (np.float64(lo) + step) if t % 2 == 0 else mx / (np.float64(hi) - step)
                m0 = 0.0
            if not (d0 != 0.0):
                continue
            fd, fm = _legacy_fit(x, w, T, asym, m0, sw, sx, d0, m0, lo, hi, tmp)
            if not (fd == fd):
                continue
            e, rd, rm = _legacy_try(x, w, fd, fm, asym, lo, hi, 0, T, best, B, tmp)
            if rd >= 0:
                best = e
                hd = rd
                hm = rm
                changed = True
                for k in range(32):
                    L[k] = B[k]
    # then alternate: refit on the best codes, try the fp16 values around the fit
    for _ in range(rounds):
        if best == 0.0:
            break
        fd, fm = _legacy_fit(x, w, L, asym, np.float64(h2f(hm)) if asym else 0.0, sw, sx, 0.0, 0.0, lo, hi, tmp)
        if not (fd == fd):
            break
        e, rd, rm = _legacy_try(x, w, fd, fm, asym, lo, hi, 1, T, best, B, tmp)
        if rd < 0:
            break
        best = e
        hd = rd
        hm = rm
        changed = True
        for k in range(32):
            L[k] = B[k]
    if changed:
        put_half_bits(o, 0, hd)
        if asym:
            put_half_bits(o, 2, hm)
        if kind == Q8_0:
            for k in range(32):
                o[2 + k] = np.uint8(L[k] & 255)
        else:
            qh = np.int64(0)
            for j in range(16):
                a = L[j] - (lo if not asym else 0)
                b = L[j + 16] - (lo if not asym else 0)
                o[qs_at + j] = np.uint8((a & 15) | ((b & 15) << 4))
                qh |= ((a >> 4) & 1) << j
                qh |= ((b >> 4) & 1) << (j + 16)
            if qh_at >= 0:
                for k in range(4):
                    o[qh_at + k] = np.uint8((qh >> (8 * k)) & 255)
    d = h2f(hd)
    m = h2f(hm) if asym else np.float32(0)
    for k in range(32):
        y = np.float32(L[k]) * d + m if asym else np.float32(L[k]) * d
        diff = np.float64(x[k]) - np.float64(y)
        tmp[k] = diff * diff
    return e_ref, best, ordered_sum(tmp, 32)


# -- the kernel --------------------------------------------------------------------------
@njit_kernel
def search_blocks(src, kind, rounds, trials, raw, err_ref, err_new, err_sq, wnorm):
    """Improve, in place, the blocks ``raw`` (rows, bytes) uint8 that the reference encoder
    wrote for ``src`` (rows, cols) float32 (every value finite), block type ``kind`` (one
    of ``SEARCHED``). ``err_ref[r]``/``err_new[r]`` (float64) get row r's weighted squared
    error before and after, ``err_sq[r]`` its plain squared error after and ``wnorm[r]``
    its weighted squared norm."""
    rows, cols = src.shape
    bv = BV[kind]
    bb = BB[kind]
    for r in prange(rows):
        x = src[r]
        sigma2 = 0.0
        for c in range(cols):
            sigma2 += np.float64(x[c]) * np.float64(x[c])
        sigma2 /= cols
        w = np.zeros(256, np.float64)
        L = np.zeros(256, np.int64)
        T = np.zeros(512, np.int64)
        B = np.zeros(32, np.int64)
        ls = np.zeros(16, np.int64)
        lm = np.zeros(16, np.int64)
        bls = np.zeros(8, np.int64)
        blm = np.zeros(8, np.int64)
        tmp = np.zeros(1280, np.float64)
        e0 = 0.0
        e1 = 0.0
        e2 = 0.0
        e3 = 0.0
        for blk in range(cols // bv):
            xb = x[blk * bv:(blk + 1) * bv]
            ob = raw[r, blk * bb:(blk + 1) * bb]
            block_weights(xb, kind, sigma2, w)
            for i in range(bv):
                e3 += w[i] * np.float64(xb[i]) * np.float64(xb[i])
            if kind == Q4_K or kind == Q5_K:
                a, b, c = search_qk(xb, w, ob, kind == Q5_K, rounds, L, T, ls, lm, bls, blm, tmp)
            elif kind == Q6_K:
                a, b, c = search_q6(xb, w, ob, rounds, L, T, ls, lm, tmp)
            else:
                a, b, c = _search_legacy(xb, w, ob, kind, rounds, trials, L, T, B, tmp)
            e0 += a
            e1 += b
            e2 += c
        err_ref[r] = e0
        err_new[r] = e1
        err_sq[r] = e2
        wnorm[r] = e3
