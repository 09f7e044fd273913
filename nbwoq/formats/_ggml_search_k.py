"""The search of K-quant blocks (Q4_K, Q5_K, Q6_K): the helpers of
``_ggml_search.search_blocks`` (the method is described there)."""

import numpy as np
from numba.extending import register_jitable

from nbwoq.formats._ggml_search_common import (h2f, half_near, ordered_sum, pair, put_half_bits, round_clamp,
                                               squared_error)


@register_jitable
def _k4_unpack(s, j):
    """Sub-block ``j``'s 6-bit scale and min from the 12 scale bytes ``s``."""
    if j < 4:
        return np.int64(s[j] & 63), np.int64(s[j + 4] & 63)
    return (np.int64(s[j + 4] & 15) | (np.int64(s[j - 4] >> 6) << 4),
            np.int64(s[j + 4] >> 4) | (np.int64(s[j] >> 6) << 4))



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
            L[k] = 0 if flat else round_clamp((np.float64(x[k]) + m64) / d64, 0, nmax)
        y = d1 * np.float32(L[k]) - m1
        diff = np.float64(x[k]) - np.float64(y)
        tmp[i] = w[k] * diff * diff
    return ordered_sum(tmp, 32)


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
    put_half_bits(o, 0, hd)
    put_half_bits(o, 2, hm)
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
def search_qk(x, w, o, five, rounds, L, T, ls, lm, bls, blm, tmp):
    """Improve one Q4_K (``five`` False) or Q5_K block ``o`` of values ``x`` in place;
    returns (reference error, final error)."""
    nmax = 31 if five else 15
    hd, hm = _qk_codes(o, five, L, ls, lm)
    d = h2f(hd)
    m = h2f(hm)
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
        saa = ordered_sum(tmp, 256)
        sab = ordered_sum(tmp[256:], 256)
        sbb = ordered_sum(tmp[512:], 256)
        sxa = ordered_sum(tmp[768:], 256)
        sxb = ordered_sum(tmp[1024:], 256)
        det = saa * sbb - sab * sab
        if det > 1e-12 * saa * sbb and det > 0.0:
            fd = (sxa * sbb - sab * sxb) / det
            fm = (sab * sxa - saa * sxb) / det
        elif saa > 0.0:
            fd = sxa / saa
            fm = np.float64(h2f(hm))
        else:
            break
        cdh = half_near(fd, 0)
        cmh = half_near(fm, 0)
        if cdh < 0 or cmh < 0:
            break
        cd = h2f(cdh)
        cm = h2f(cmh)
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
            sw = ordered_sum(w[32 * j:], 32)
            sl = ordered_sum(tmp[32:], 32)
            sll = ordered_sum(tmp[64:], 32)
            sx = ordered_sum(tmp[96:], 32)
            sxl = ordered_sum(tmp[128:], 32)
            det2 = sw * sll - sl * sl
            ts = np.float64(ls[j]) * np.float64(cd)
            to = np.float64(lm[j]) * np.float64(cm)
            if det2 > 0.0 and sw > 0.0:  # x ~ ts q - to
                ts = (sw * sxl - sl * sx) / det2
                to = (ts * sl - sx) / sw
            c0, c1 = pair(ts / np.float64(cd), ls[j], 0, 63)
            m0, m1 = pair(to / np.float64(cm), lm[j], 0, 63) if cm != np.float32(0) else (lm[j], lm[j])
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
    d = h2f(hd)
    m = h2f(hm)
    plain = 0.0
    for j in range(8):
        plain += squared_error(x, 32 * j, 32, d * np.float32(ls[j]), m * np.float32(lm[j]), L, tmp)
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
            L[k] = 0 if flat else round_clamp(np.float64(x[k]) / d64, -32, 31)
        y = d1 * np.float32(L[k])
        diff = np.float64(x[k]) - np.float64(y)
        tmp[i] = w[k] * diff * diff
    return ordered_sum(tmp, 16)


@register_jitable
def search_q6(x, w, o, rounds, L, T, sc, bsc, tmp):
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
    d = h2f(hd)
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
        saa = ordered_sum(tmp, 256)
        sxa = ordered_sum(tmp[256:], 256)
        if not (saa > 0.0):
            break
        fd = sxa / saa
        improved = False
        for kd in range(-1, 2):
            cdh = half_near(fd, kd)
            if cdh < 0:
                continue
            cd = h2f(cdh)
            if cd == np.float32(0):
                continue
            total = 0.0
            for j in range(16):
                for i in range(16):
                    k = 16 * j + i
                    q = np.float64(L[k])
                    tmp[32 + i] = w[k] * q * q
                    tmp[64 + i] = w[k] * np.float64(x[k]) * q
                sqq = ordered_sum(tmp[32:], 16)
                sxq = ordered_sum(tmp[64:], 16)
                ts = sxq / sqq if sqq > 0.0 else np.float64(sc[j]) * np.float64(cd)
                c0, c1 = pair(ts / np.float64(cd), sc[j], -128, 127)
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
        put_half_bits(o, 208, hd)
    d = h2f(hd)
    plain = 0.0
    for j in range(16):
        plain += squared_error(x, 16 * j, 16, d * np.float32(sc[j]), np.float32(0), L, tmp)
    return e_ref, best, plain
