"""nbwoq's search encoder of GGML blocks: the Numba kernel ``search_blocks``, which
improves blocks the reference encoder wrote, in place, in the same bytes layout.

Every block starts from llama.cpp's data-free result (``_ggml_rows.encode_blocks``) and
keeps a change only when the block's weighted squared error goes down, so no block is
ever worse than the reference by that measure. The error is measured on the values as
llama.cpp decodes them (float32, its order), weighted as the reference's own search
weighs them (``block_weights``).

The search alternates, a few rounds per block:

* K-quants (Q4_K, Q5_K, Q6_K): with the codes and the sub-block integers fixed, refit
  the fp16 super-scale(s) by weighted least squares and try the fp16 values around the
  fit; for each, give every sub-block the best integer scale (and min) among the
  neighbours of its own least-squares fit and its current one, with codes re-chosen for
  the candidate's stored values.
* legacy blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): a grid of trial scales around
  the reference's (the extreme value at either end of the code range, for the
  symmetric types), each refit by weighted least squares on its codes; the fit of least
  error is rounded to fp16 (and its neighbours), then the same alternation.

``_ggml_search_reference`` is the slow twin; the tests compare the two byte for byte.
Sums are float64 and walk the values in order, so both give the same bits.
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._config import njit_kernel
from nbwoq._llvm import float_to_half_bits, half_bits_to_float
from nbwoq.formats.ggml_blocks import BLOCK_TYPES

#: Block type name -> the kernel's ``kind`` argument (the order of ``BLOCK_TYPES``).
KIND = {name: i for i, name in enumerate(BLOCK_TYPES)}
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = (KIND[n] for n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                                                                  "Q4_K", "Q5_K", "Q6_K"))
#: Types the search improves (every other type keeps the reference's bytes).
SEARCHED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
_BV = np.array([t.block_values for t in BLOCK_TYPES.values()], dtype=np.int64)
_BB = np.array([t.block_bytes for t in BLOCK_TYPES.values()], dtype=np.int64)
#: Rounds of the alternation per block; trial scales per side of a legacy block.
ROUNDS = 3
LEGACY_TRIALS = 4


# -- bytes -------------------------------------------------------------------------------
@register_jitable
def _half(o, at):
    return half_bits_to_float(np.uint16(np.uint16(o[at]) | (np.uint16(o[at + 1]) << np.uint16(8))))


@register_jitable
def _put_half_bits(o, at, h):
    o[at] = np.uint8(h & 255)
    o[at + 1] = np.uint8((h >> 8) & 255)


@register_jitable
def _half_near(v, k):
    """Bits of the fp16 ``k`` steps (-1, 0, 1) from float ``v`` rounded to fp16, or -1
    when that is not a finite half."""
    if not (abs(v) < 65504.0):
        return np.int64(-1)
    h = np.int64(float_to_half_bits(np.float32(v))) + k
    if h < 0 or h > 0xFFFF or (h & 0x7C00) == 0x7C00:
        return np.int64(-1)
    return h


@register_jitable
def _h2f(h):
    return half_bits_to_float(np.uint16(h))


@register_jitable
def _round_clamp(v, lo, hi):
    """The integer nearest float64 ``v`` (half up), clamped to ``[lo, hi]``; selects, not
    branches, so that the code loops vectorize (``v`` is never NaN here)."""
    v = np.float64(lo) if v < lo else v
    v = np.float64(hi) if v > hi else v
    return np.int64(np.floor(v + 0.5))


@register_jitable
def _total(t, n):
    """The running sum of ``t[:n]``, in order. The loops that fill ``t`` hold no sum, so
    they vectorize; the sum keeps the order the twin's ``_total`` has."""
    e = 0.0
    for i in range(n):
        e += t[i]
    return e


@register_jitable
def _k4_unpack(s, j):
    """Sub-block ``j``'s 6-bit scale and min from the 12 scale bytes ``s``."""
    if j < 4:
        return np.int64(s[j] & 63), np.int64(s[j + 4] & 63)
    return (np.int64(s[j + 4] & 15) | (np.int64(s[j - 4] >> 6) << 4),
            np.int64(s[j + 4] >> 4) | (np.int64(s[j] >> 6) << 4))


@register_jitable
def _plain(x, at, n, d1, m1, L, tmp):
    """Squared error of ``x[at:at + n]`` stored as ``d1 * L - m1`` (float32)."""
    for i in range(n):
        y = d1 * np.float32(L[at + i]) - m1
        diff = np.float64(x[at + i]) - np.float64(y)
        tmp[i] = diff * diff
    return _total(tmp, n)


@register_jitable
def _pair(v, cur, lo, hi):
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


# -- Q4_K / Q5_K -------------------------------------------------------------------------
@register_jitable
def _qk_sub(x, w, j, d1, m1, nmax, L, keep, tmp):
    """Weighted error of sub-block ``j`` stored as ``d1 * q - m1`` (float32). ``keep``:
    with the codes in ``L``; else nearest codes, written to ``L``."""
    m64 = np.float64(m1)
    d64 = np.float64(d1)
    flat = d1 == np.float32(0)
    for i in range(32):
        k = 32 * j + i
        if not keep:
            L[k] = 0 if flat else _round_clamp((np.float64(x[k]) + m64) / d64, 0, nmax)
        y = d1 * np.float32(L[k]) - m1
        diff = np.float64(x[k]) - np.float64(y)
        tmp[i] = w[k] * diff * diff
    return _total(tmp, 32)


@register_jitable
def _qk_codes(o, five, L, ls, lm):
    """Codes, sub-block scales and mins of the Q4_K/Q5_K block ``o``; returns the fp16 bits
    of d and dmin."""
    for j in range(8):
        ls[j], lm[j] = _k4_unpack(o[4:16], j)
    for t in range(4):
        for i in range(32):
            if five:
                q = o[48 + 32 * t + i]
                h = o[16 + i]
                L[64 * t + i] = np.int64(q & 15) | (np.int64((h >> (2 * t)) & 1) << 4)
                L[64 * t + 32 + i] = np.int64(q >> 4) | (np.int64((h >> (2 * t + 1)) & 1) << 4)
            else:
                q = o[16 + 32 * t + i]
                L[64 * t + i] = np.int64(q & 15)
                L[64 * t + 32 + i] = np.int64(q >> 4)
    return np.int64(o[0]) | (np.int64(o[1]) << 8), np.int64(o[2]) | (np.int64(o[3]) << 8)


@register_jitable
def _qk_store(o, five, hd, hm, L, ls, lm):
    _put_half_bits(o, 0, hd)
    _put_half_bits(o, 2, hm)
    s = o[4:16]
    for j in range(12):
        s[j] = 0
    for j in range(8):
        if j < 4:
            s[j] = np.uint8(ls[j])
            s[j + 4] = np.uint8(lm[j])
        else:
            s[j + 4] = np.uint8((ls[j] & 15) | ((lm[j] & 15) << 4))
            s[j - 4] |= np.uint8((ls[j] >> 4) << 6)
            s[j] |= np.uint8((lm[j] >> 4) << 6)
    if five:
        for i in range(32):
            o[16 + i] = 0
    for t in range(4):
        for i in range(32):
            a = L[64 * t + i]
            b = L[64 * t + 32 + i]
            if five:
                o[16 + i] |= np.uint8(((a >> 4) << (2 * t)) | ((b >> 4) << (2 * t + 1)))
                o[48 + 32 * t + i] = np.uint8((a & 15) | ((b & 15) << 4))
            else:
                o[16 + 32 * t + i] = np.uint8(a | (b << 4))


@register_jitable
def _search_qk(x, w, o, five, rounds, L, T, ls, lm, bls, blm, tmp):
    """Improve one Q4_K (``five`` False) or Q5_K block ``o`` of values ``x`` in place;
    returns (reference error, final error)."""
    nmax = 31 if five else 15
    hd, hm = _qk_codes(o, five, L, ls, lm)
    d = _h2f(hd)
    m = _h2f(hm)
    e_ref = 0.0
    for j in range(8):
        e_ref += _qk_sub(x, w, j, d * np.float32(ls[j]), m * np.float32(lm[j]), nmax, L, True, tmp)
    best = e_ref
    changed = False
    for _ in range(rounds):
        if best == 0.0:
            break
        # (d, dmin) by weighted least squares with the codes and integers fixed: x ~ d a - m b
        for k in range(256):
            a = np.float64(ls[k // 32] * L[k])
            b = np.float64(lm[k // 32])
            v = np.float64(x[k])
            tmp[k] = w[k] * a * a
            tmp[256 + k] = w[k] * a * b
            tmp[512 + k] = w[k] * b * b
            tmp[768 + k] = w[k] * v * a
            tmp[1024 + k] = w[k] * v * b
        saa = _total(tmp, 256)
        sab = _total(tmp[256:], 256)
        sbb = _total(tmp[512:], 256)
        sxa = _total(tmp[768:], 256)
        sxb = _total(tmp[1024:], 256)
        det = saa * sbb - sab * sab
        if det > 1e-12 * saa * sbb and det > 0.0:
            fd = (sxa * sbb - sab * sxb) / det
            fm = (sab * sxa - saa * sxb) / det
        elif saa > 0.0:
            fd = sxa / saa
            fm = np.float64(_h2f(hm))
        else:
            break
        cdh = _half_near(fd, 0)
        cmh = _half_near(fm, 0)
        if cdh < 0 or cmh < 0:
            break
        cd = _h2f(cdh)
        cm = _h2f(cmh)
        if not (cd > np.float32(0)):
            break
        # each sub-block: the best integer scale and min near its own fit on its codes
        total = 0.0
        for j in range(8):
            for i in range(32):
                k = 32 * j + i
                q = np.float64(L[k])
                v = np.float64(x[k])
                tmp[32 + i] = w[k] * q
                tmp[64 + i] = w[k] * q * q
                tmp[96 + i] = w[k] * v
                tmp[128 + i] = w[k] * v * q
            sw = _total(w[32 * j:], 32)
            sl = _total(tmp[32:], 32)
            sll = _total(tmp[64:], 32)
            sx = _total(tmp[96:], 32)
            sxl = _total(tmp[128:], 32)
            det2 = sw * sll - sl * sl
            ts = np.float64(ls[j]) * np.float64(cd)
            to = np.float64(lm[j]) * np.float64(cm)
            if det2 > 0.0 and sw > 0.0:  # x ~ ts q - to
                ts = (sw * sxl - sl * sx) / det2
                to = (ts * sl - sx) / sw
            c0, c1 = _pair(ts / np.float64(cd), ls[j], 0, 63)
            m0, m1 = _pair(to / np.float64(cm), lm[j], 0, 63) if cm != np.float32(0) else (lm[j], lm[j])
            e_j = np.inf
            for ci in range(3):
                c_s = c0 if ci == 0 else c1 if ci == 1 else ls[j]
                if (ci >= 1 and c_s == c0) or (ci == 2 and c_s == c1):
                    continue
                for cj in range(3):
                    c_m = m0 if cj == 0 else m1 if cj == 1 else lm[j]
                    if (cj >= 1 and c_m == m0) or (cj == 2 and c_m == m1):
                        continue
                    e = _qk_sub(x, w, j, cd * np.float32(c_s), cm * np.float32(c_m), nmax, T, False, tmp)
                    if e < e_j:
                        e_j = e
                        bls[j] = c_s
                        blm[j] = c_m
                        for i in range(32):
                            T[256 + 32 * j + i] = T[32 * j + i]
            total += e_j
        if not (total < best):
            break
        best = total
        changed = True
        hd = cdh
        hm = cmh
        for j in range(8):
            ls[j] = bls[j]
            lm[j] = blm[j]
        for k in range(256):
            L[k] = T[256 + k]
    if changed:
        _qk_store(o, five, hd, hm, L, ls, lm)
    d = _h2f(hd)
    m = _h2f(hm)
    plain = 0.0
    for j in range(8):
        plain += _plain(x, 32 * j, 32, d * np.float32(ls[j]), m * np.float32(lm[j]), L, tmp)
    return e_ref, best, plain


# -- Q6_K --------------------------------------------------------------------------------
@register_jitable
def _q6_sub(x, w, j, d1, L, keep, tmp):
    """Weighted error of 16-value sub-block ``j`` stored as ``d1 * q`` (float32); codes as
    in ``_qk_sub``."""
    d64 = np.float64(d1)
    flat = d1 == np.float32(0)
    for i in range(16):
        k = 16 * j + i
        if not keep:
            L[k] = 0 if flat else _round_clamp(np.float64(x[k]) / d64, -32, 31)
        y = d1 * np.float32(L[k])
        diff = np.float64(x[k]) - np.float64(y)
        tmp[i] = w[k] * diff * diff
    return _total(tmp, 16)


@register_jitable
def _search_q6(x, w, o, rounds, L, T, sc, bsc, tmp):
    """Improve one Q6_K block ``o`` in place; returns (reference error, final error)."""
    for h in range(2):
        for i in range(32):
            ql0 = np.int64(o[64 * h + i])
            ql1 = np.int64(o[64 * h + 32 + i])
            qh = np.int64(o[128 + 32 * h + i])
            L[128 * h + i] = ((ql0 & 15) | ((qh & 3) << 4)) - 32
            L[128 * h + 32 + i] = ((ql1 & 15) | (((qh >> 2) & 3) << 4)) - 32
            L[128 * h + 64 + i] = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) - 32
            L[128 * h + 96 + i] = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) - 32
    for j in range(16):
        sc[j] = ((np.int64(o[192 + j]) & 255) ^ 128) - 128
    hd = np.int64(o[208]) | (np.int64(o[209]) << 8)
    d = _h2f(hd)
    e_ref = 0.0
    for j in range(16):
        e_ref += _q6_sub(x, w, j, d * np.float32(sc[j]), L, True, tmp)
    best = e_ref
    changed = False
    for _ in range(rounds):
        if best == 0.0:
            break
        for k in range(256):
            a = np.float64(sc[k // 16] * L[k])
            tmp[k] = w[k] * a * a
            tmp[256 + k] = w[k] * np.float64(x[k]) * a
        saa = _total(tmp, 256)
        sxa = _total(tmp[256:], 256)
        if not (saa > 0.0):
            break
        fd = sxa / saa
        improved = False
        for kd in range(-1, 2):
            cdh = _half_near(fd, kd)
            if cdh < 0:
                continue
            cd = _h2f(cdh)
            if cd == np.float32(0):
                continue
            total = 0.0
            for j in range(16):
                for i in range(16):
                    k = 16 * j + i
                    q = np.float64(L[k])
                    tmp[32 + i] = w[k] * q * q
                    tmp[64 + i] = w[k] * np.float64(x[k]) * q
                sqq = _total(tmp[32:], 16)
                sxq = _total(tmp[64:], 16)
                ts = sxq / sqq if sqq > 0.0 else np.float64(sc[j]) * np.float64(cd)
                c0, c1 = _pair(ts / np.float64(cd), sc[j], -128, 127)
                e_j = np.inf
                for ci in range(3):
                    c = c0 if ci == 0 else c1 if ci == 1 else sc[j]
                    if (ci >= 1 and c == c0) or (ci == 2 and c == c1):
                        continue
                    e = _q6_sub(x, w, j, cd * np.float32(c), T, False, tmp)
                    if e < e_j:
                        e_j = e
                        bsc[j] = c
                        for i in range(16):
                            T[256 + 16 * j + i] = T[16 * j + i]
                total += e_j
            if total < best:
                best = total
                improved = True
                hd = cdh
                for j in range(16):
                    sc[j] = bsc[j]
                for k in range(256):
                    L[k] = T[256 + k]
        if not improved:
            break
        changed = True
    if changed:
        for h in range(2):
            for i in range(32):
                a = L[128 * h + i] + 32
                b = L[128 * h + 32 + i] + 32
                c = L[128 * h + 64 + i] + 32
                e = L[128 * h + 96 + i] + 32
                o[64 * h + i] = np.uint8((a & 15) | ((c & 15) << 4))
                o[64 * h + 32 + i] = np.uint8((b & 15) | ((e & 15) << 4))
                o[128 + 32 * h + i] = np.uint8((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6))
        for j in range(16):
            o[192 + j] = np.uint8(sc[j] & 255)
        _put_half_bits(o, 208, hd)
    d = _h2f(hd)
    plain = 0.0
    for j in range(16):
        plain += _plain(x, 16 * j, 16, d * np.float32(sc[j]), np.float32(0), L, tmp)
    return e_ref, best, plain


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
            L[k] = _round_clamp((np.float64(x[k]) - m64) * inv, lo, hi)
        y = np.float32(L[k]) * d + m if asym else np.float32(L[k]) * d
        diff = np.float64(x[k]) - np.float64(y)
        tmp[k] = w[k] * diff * diff
    return _total(tmp, 32)


@register_jitable
def _legacy_fit(x, w, L, asym, m, sw, sx, sxx, d0, m0, lo, hi, tmp):
    """Weighted least-squares ``(d, m)`` of ``x ~ L d + m`` (``m`` kept when not ``asym``
    or degenerate; NaN ``d`` when every code is 0), and the weighted error of that fit.
    With ``d0`` non-zero, the codes are first set to the nearest of ``x ~ L d0 + m0`` in
    ``[lo, hi]``. ``sw``/``sx``/``sxx``: sums of ``w``, ``w x``, ``w x x``."""
    inv = 0.0 if d0 == 0.0 else 1.0 / d0
    recode = d0 != 0.0
    for k in range(32):
        v = np.float64(x[k])
        if recode:
            L[k] = _round_clamp((v - m0) * inv, lo, hi)
        q = np.float64(L[k])
        tmp[k] = w[k] * q
        tmp[32 + k] = w[k] * q * q
        tmp[64 + k] = w[k] * v * q
    sl = _total(tmp, 32)
    sll = _total(tmp[32:], 32)
    sxl = _total(tmp[64:], 32)
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
    e = sxx - 2.0 * d * sxl - 2.0 * m * sx + d * d * sll + 2.0 * d * m * sl + m * m * sw
    return d, m, e


@register_jitable
def _legacy_try(x, w, fd, fm, asym, lo, hi, near, T, best, Lbest, tmp):
    """Try the fp16 values within ``near`` steps of ``(fd, fm)``; the best below ``best``
    goes to ``Lbest``. Returns (error, d bits, m bits), bits -1 when none was better."""
    rd = -1
    rm = -1
    for kd in range(-near, near + 1):
        cdh = _half_near(fd, kd)
        if cdh < 0:
            continue
        cd = _h2f(cdh)
        if cd == np.float32(0):
            continue
        for km in range(-near if asym else 0, near + 1 if asym else 1):
            cmh = _half_near(fm, km) if asym else np.int64(0)
            if cmh < 0:
                continue
            e = _legacy_err(x, w, cd, _h2f(cmh), asym, lo, hi, T, False, tmp)
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
    d = _h2f(hd)
    m = _h2f(hm) if asym else np.float32(0)
    e_ref = _legacy_err(x, w, d, m, asym, lo, hi, L, True, tmp)
    best = e_ref
    changed = False
    for k in range(32):
        tmp[k] = w[k] * np.float64(x[k])
        tmp[32 + k] = w[k] * np.float64(x[k]) * np.float64(x[k])
    sw = _total(w, 32)
    sx = _total(tmp, 32)
    sxx = _total(tmp[32:], 32)
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
    # each refit on its codes; the fit of least error is rounded to fp16 and tried
    fit_e = np.inf
    fit_d = np.nan
    fit_m = 0.0
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
            fd, fm, fe = _legacy_fit(x, w, T, asym, m0, sw, sx, sxx, d0, m0, lo, hi, tmp)
            if fd == fd and fe < fit_e:
                fit_e = fe
                fit_d = fd
                fit_m = fm
    if fit_d == fit_d:
        e, rd, rm = _legacy_try(x, w, fit_d, fit_m, asym, lo, hi, 1, T, best, B, tmp)
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
        fd, fm, _ = _legacy_fit(x, w, L, asym, np.float64(_h2f(hm)) if asym else 0.0, sw, sx, sxx, 0.0, 0.0, lo, hi,
                                tmp)
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
        _put_half_bits(o, 0, hd)
        if asym:
            _put_half_bits(o, 2, hm)
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
    d = _h2f(hd)
    m = _h2f(hm) if asym else np.float32(0)
    for k in range(32):
        y = np.float32(L[k]) * d + m if asym else np.float32(L[k]) * d
        diff = np.float64(x[k]) - np.float64(y)
        tmp[k] = diff * diff
    return e_ref, best, _total(tmp, 32)


# -- the kernel --------------------------------------------------------------------------
@njit_kernel
def search_blocks(src, kind, rounds, trials, raw, err_ref, err_new, err_sq):
    """Improve, in place, the blocks ``raw`` (rows, bytes) uint8 that the reference encoder
    wrote for ``src`` (rows, cols) float32 (every value finite), block type ``kind`` (one
    of ``SEARCHED``). ``err_ref[r]``/``err_new[r]`` (float64) get row r's weighted squared
    error before and after, ``err_sq[r]`` its plain squared error after."""
    rows, cols = src.shape
    bv = _BV[kind]
    bb = _BB[kind]
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
        for blk in range(cols // bv):
            xb = x[blk * bv:(blk + 1) * bv]
            ob = raw[r, blk * bb:(blk + 1) * bb]
            block_weights(xb, kind, sigma2, w)
            if kind == Q4_K or kind == Q5_K:
                a, b, c = _search_qk(xb, w, ob, kind == Q5_K, rounds, L, T, ls, lm, bls, blm, tmp)
            elif kind == Q6_K:
                a, b, c = _search_q6(xb, w, ob, rounds, L, T, ls, lm, tmp)
            else:
                a, b, c = _search_legacy(xb, w, ob, kind, rounds, trials, L, T, B, tmp)
            e0 += a
            e1 += b
            e2 += c
        err_ref[r] = e0
        err_new[r] = e1
        err_sq[r] = e2
