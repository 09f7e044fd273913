"""The slow, obvious twin of ``_ggml_search``: the same search, written block by block
with NumPy, which the tests hold byte for byte against the kernel.

Every block starts from the reference encoder's bytes and a change is kept only when
the block's weighted squared error goes down (see ``_ggml_search`` for the method).
Sums are float64 and sequential (``_total``: a running sum, as the kernel's
``ordered_sum`` adds), values are decoded in float32 as llama.cpp decodes them, and
each float expression keeps the kernel's order of operations, so the two agree bit for
bit.
"""

import numpy as np

from nbwoq.formats.ggml_blocks import BLOCK_TYPES

_f32 = np.float32
SEARCHED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
#: (lowest code, highest code, has a min, offset of qh or None, offset of qs)
LEGACY = {"Q4_0": (-8, 7, False, None, 2), "Q5_0": (-16, 15, False, 2, 6), "Q4_1": (0, 15, True, None, 4),
          "Q5_1": (0, 31, True, 4, 8), "Q8_0": (-128, 127, False, None, 2)}


def _total(a):
    """The running (left to right) float64 sum of ``a``."""
    return float(np.cumsum(np.asarray(a, dtype=np.float64))[-1]) if len(a) else 0.0


def _half_value(h):
    return np.array([h], dtype=np.uint16).view(np.float16).astype(np.float32)[0]


def _half_near(v, k):
    """fp16 bits ``k`` steps from ``v`` rounded to fp16, or None when not a finite half."""
    if not abs(v) < 65504.0:
        return None
    h = int(np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0]) + k
    if h < 0 or h > 0xFFFF or (h & 0x7C00) == 0x7C00:
        return None
    return h


def _nearest(v, lo, hi):
    """Nearest integers of float64 ``v``, half up, clamped to ``[lo, hi]``."""
    return np.floor(np.clip(v, float(lo), float(hi)) + 0.5).astype(np.int64)


def _pair(v, cur, lo, hi):
    if not abs(v) < 1e6:
        return cur, cur
    f = np.floor(v)
    return int(min(max(f, lo), hi)), int(min(max(f + 1.0, lo), hi))


def _candidates(c0, c1, cur):
    """``c0``, ``c1``, ``cur`` without repeats, in that order."""
    out = [c0]
    for c in (c1, cur):
        if c not in out:
            out.append(c)
    return out


def weights(x, type_name, sigma2):
    """The weights of block ``x`` (float32) as ``_ggml_search.block_weights`` sets them."""
    v = x.astype(np.float64)
    if type_name in ("Q4_K", "Q5_K"):
        sub = v.reshape(-1, 32)
        av = np.array([np.sqrt(_total(s * s) / 32.0) for s in sub])
        return (av[:, None] + np.abs(sub)).reshape(-1)
    if type_name == "Q6_K":
        return v * v
    return np.sqrt(sigma2 + v * v)


def _err(x, w, y):
    diff = x.astype(np.float64) - y.astype(np.float64)
    return _total(w * diff * diff)


# -- Q4_K / Q5_K -------------------------------------------------------------------------
def _qk_read(o, five):
    s = o[4:16].astype(np.int64)
    ls = np.concatenate([s[0:4] & 63, (s[8:12] & 15) | ((s[0:4] >> 6) << 4)])
    lm = np.concatenate([s[4:8] & 63, (s[8:12] >> 4) | ((s[4:8] >> 6) << 4)])
    L = np.zeros(256, np.int64)
    for t in range(4):
        if five:
            q = o[48 + 32 * t:80 + 32 * t].astype(np.int64)
            h = o[16:48].astype(np.int64)
            L[64 * t:64 * t + 32] = (q & 15) | (((h >> (2 * t)) & 1) << 4)
            L[64 * t + 32:64 * t + 64] = (q >> 4) | (((h >> (2 * t + 1)) & 1) << 4)
        else:
            q = o[16 + 32 * t:48 + 32 * t].astype(np.int64)
            L[64 * t:64 * t + 32] = q & 15
            L[64 * t + 32:64 * t + 64] = q >> 4
    return int(o[0]) | (int(o[1]) << 8), int(o[2]) | (int(o[3]) << 8), ls, lm, L


def _qk_write(five, hd, hm, ls, lm, L, nbytes):
    o = np.zeros(nbytes, np.uint8)
    o[0:4] = [hd & 255, hd >> 8, hm & 255, hm >> 8]
    s = np.zeros(12, np.int64)
    s[0:4] = ls[0:4] | ((ls[4:8] >> 4) << 6)
    s[4:8] = lm[0:4] | ((lm[4:8] >> 4) << 6)
    s[8:12] = (ls[4:8] & 15) | ((lm[4:8] & 15) << 4)
    o[4:16] = s
    for t in range(4):
        a = L[64 * t:64 * t + 32]
        b = L[64 * t + 32:64 * t + 64]
        if five:
            o[16:48] |= (((a >> 4) << (2 * t)) | ((b >> 4) << (2 * t + 1))).astype(np.uint8)
            o[48 + 32 * t:80 + 32 * t] = (a & 15) | ((b & 15) << 4)
        else:
            o[16 + 32 * t:48 + 32 * t] = a | (b << 4)
    return o


def _qk_sub(x, w, d1, m1, nmax, L=None):
    """(error, codes) of a 32-value sub-block stored as ``d1 * q - m1``; nearest codes
    unless ``L`` is given."""
    if L is None:
        L = np.zeros(32, np.int64) if d1 == 0 else _nearest((x.astype(np.float64) + np.float64(m1)) / np.float64(d1),
                                                             0, nmax)
    return _err(x, w, d1 * L.astype(np.float32) - m1), L


def search_qk(x, w, o, five, rounds):
    """One Q4_K/Q5_K block: (new bytes, reference error, final error)."""
    nmax = 31 if five else 15
    hd, hm, ls, lm, L = _qk_read(o, five)
    d, m = _half_value(hd), _half_value(hm)
    best = _total([_qk_sub(x[32 * j:32 * j + 32], w[32 * j:32 * j + 32], d * _f32(ls[j]), m * _f32(lm[j]), nmax,
                           L[32 * j:32 * j + 32])[0] for j in range(8)])
    e_ref = best
    changed = False
    v = x.astype(np.float64)
    for _ in range(rounds):
        if best == 0.0:
            break
        a = np.repeat(ls, 32) * L
        a = a.astype(np.float64)
        b = np.repeat(lm, 32).astype(np.float64)
        saa, sab, sbb = _total(w * a * a), _total(w * a * b), _total(w * b * b)
        sxa, sxb = _total(w * v * a), _total(w * v * b)
        det = saa * sbb - sab * sab
        if det > 1e-12 * saa * sbb and det > 0.0:
            fd, fm = (sxa * sbb - sab * sxb) / det, (sab * sxa - saa * sxb) / det
        elif saa > 0.0:
            fd, fm = sxa / saa, float(_half_value(hm))
        else:
            break
        cdh, cmh = _half_near(fd, 0), _half_near(fm, 0)
        if cdh is None or cmh is None:
            break
        cd, cm = _half_value(cdh), _half_value(cmh)
        if not cd > 0:
            break
        total, new_ls, new_lm, new_L = 0.0, ls.copy(), lm.copy(), L.copy()
        for j in range(8):
            sl_ = slice(32 * j, 32 * j + 32)
            q, xv, wj = L[sl_].astype(np.float64), v[sl_], w[sl_]
            sw, sl, sll, sx, sxl = _total(wj), _total(wj * q), _total(wj * q * q), _total(wj * xv), _total(wj * xv * q)
            det2 = sw * sll - sl * sl
            ts, to = float(ls[j]) * float(cd), float(lm[j]) * float(cm)
            if det2 > 0.0 and sw > 0.0:
                ts = (sw * sxl - sl * sx) / det2
                to = (ts * sl - sx) / sw
            c0, c1 = _pair(ts / float(cd), int(ls[j]), 0, 63)
            m0, m1 = _pair(to / float(cm), int(lm[j]), 0, 63) if cm != 0 else (int(lm[j]), int(lm[j]))
            e_j = np.inf
            for c_s in _candidates(c0, c1, int(ls[j])):
                for c_m in _candidates(m0, m1, int(lm[j])):
                    e, codes = _qk_sub(x[sl_], wj, cd * _f32(c_s), cm * _f32(c_m), nmax)
                    if e < e_j:
                        e_j, new_ls[j], new_lm[j], new_L[sl_] = e, c_s, c_m, codes
            total += e_j
        if not total < best:
            break
        best, changed, hd, hm, ls, lm, L = total, True, cdh, cmh, new_ls, new_lm, new_L
    return (_qk_write(five, hd, hm, ls, lm, L, len(o)) if changed else o.copy()), e_ref, best


# -- Q6_K --------------------------------------------------------------------------------
def _q6_read(o):
    L = np.zeros(256, np.int64)
    for h in range(2):
        ql0 = o[64 * h:64 * h + 32].astype(np.int64)
        ql1 = o[64 * h + 32:64 * h + 64].astype(np.int64)
        qh = o[128 + 32 * h:160 + 32 * h].astype(np.int64)
        L[128 * h:128 * h + 32] = ((ql0 & 15) | ((qh & 3) << 4)) - 32
        L[128 * h + 32:128 * h + 64] = ((ql1 & 15) | (((qh >> 2) & 3) << 4)) - 32
        L[128 * h + 64:128 * h + 96] = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) - 32
        L[128 * h + 96:128 * h + 128] = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) - 32
    return int(o[208]) | (int(o[209]) << 8), o[192:208].view(np.int8).astype(np.int64), L


def _q6_write(hd, sc, L):
    o = np.zeros(210, np.uint8)
    u = L + 32
    for h in range(2):
        a, b, c, e = (u[128 * h + 32 * i:128 * h + 32 * i + 32] for i in range(4))
        o[64 * h:64 * h + 32] = (a & 15) | ((c & 15) << 4)
        o[64 * h + 32:64 * h + 64] = (b & 15) | ((e & 15) << 4)
        o[128 + 32 * h:160 + 32 * h] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    o[192:208] = (sc & 255).astype(np.uint8)
    o[208:210] = [hd & 255, hd >> 8]
    return o


def _q6_sub(x, w, d1, L=None):
    if L is None:
        L = np.zeros(16, np.int64) if d1 == 0 else _nearest(x.astype(np.float64) / np.float64(d1), -32, 31)
    return _err(x, w, d1 * L.astype(np.float32)), L


def search_q6(x, w, o, rounds):
    """One Q6_K block: (new bytes, reference error, final error)."""
    hd, sc, L = _q6_read(o)
    d = _half_value(hd)
    best = _total([_q6_sub(x[16 * j:16 * j + 16], w[16 * j:16 * j + 16], d * _f32(sc[j]), L[16 * j:16 * j + 16])[0]
                   for j in range(16)])
    e_ref = best
    changed = False
    v = x.astype(np.float64)
    for _ in range(rounds):
        if best == 0.0:
            break
        a = (np.repeat(sc, 16) * L).astype(np.float64)
        saa, sxa = _total(w * a * a), _total(w * v * a)
        if not saa > 0.0:
            break
        fd = sxa / saa
        improved = False
        for kd in (-1, 0, 1):
            cdh = _half_near(fd, kd)
            if cdh is None or _half_value(cdh) == 0:
                continue
            cd = _half_value(cdh)
            total, new_sc, new_L = 0.0, sc.copy(), L.copy()
            for j in range(16):
                sl_ = slice(16 * j, 16 * j + 16)
                q, wj = L[sl_].astype(np.float64), w[sl_]
                sqq, sxq = _total(wj * q * q), _total(wj * v[sl_] * q)
                ts = sxq / sqq if sqq > 0.0 else float(sc[j]) * float(cd)
                c0, c1 = _pair(ts / float(cd), int(sc[j]), -128, 127)
                e_j = np.inf
                for c in _candidates(c0, c1, int(sc[j])):
                    e, codes = _q6_sub(x[sl_], wj, cd * _f32(c))
                    if e < e_j:
                        e_j, new_sc[j], new_L[sl_] = e, c, codes
                total += e_j
            if total < best:
                best, improved, hd, sc, L = total, True, cdh, new_sc, new_L
        if not improved:
            break
        changed = True
    return (_q6_write(hd, sc, L) if changed else o.copy()), e_ref, best


# -- legacy blocks of 32 -----------------------------------------------------------------
def _legacy_read(o, type_name):
    lo, hi, asym, qh_at, qs_at = LEGACY[type_name]
    hd = int(o[0]) | (int(o[1]) << 8)
    hm = int(o[2]) | (int(o[3]) << 8) if asym else 0
    if type_name == "Q8_0":
        return hd, hm, o[2:34].view(np.int8).astype(np.int64)
    qh = int.from_bytes(bytes(o[qh_at:qh_at + 4]), "little") if qh_at is not None else 0
    qs = o[qs_at:qs_at + 16].astype(np.int64)
    high = np.array([(qh >> j) & 1 for j in range(32)], dtype=np.int64) << 4
    L = np.concatenate([qs & 15, qs >> 4]) | high
    return hd, hm, L + (0 if asym else lo)


def _legacy_write(o, type_name, hd, hm, L):
    lo, hi, asym, qh_at, qs_at = LEGACY[type_name]
    o = o.copy()
    o[0:2] = [hd & 255, hd >> 8]
    if asym:
        o[2:4] = [hm & 255, hm >> 8]
    if type_name == "Q8_0":
        o[2:34] = (L & 255).astype(np.uint8)
        return o
    u = L - (0 if asym else lo)
    o[qs_at:qs_at + 16] = (u[:16] & 15) | ((u[16:] & 15) << 4)
    if qh_at is not None:
        qh = sum(int((u[j] >> 4) & 1) << j for j in range(32))
        o[qh_at:qh_at + 4] = list(qh.to_bytes(4, "little"))
    return o


def _legacy_err(x, w, d, m, asym, lo, hi, L=None):
    if L is None:
        inv = 0.0 if d == 0 else 1.0 / np.float64(d)
        L = _nearest((x.astype(np.float64) - np.float64(m)) * inv, lo, hi)
    y = L.astype(np.float32) * d + m if asym else L.astype(np.float32) * d
    return _err(x, w, y), L


def _legacy_fit(v, w, L, asym, m, sw, sx):
    """Weighted least squares ``x ~ L d + m``: (d, m)."""
    q = L.astype(np.float64)
    sl, sll, sxl = _total(w * q), _total(w * q * q), _total(w * v * q)
    d = np.nan
    if asym:
        det = sw * sll - sl * sl
        if det > 0.0:
            d = (sw * sxl - sl * sx) / det
            m = (sx - d * sl) / sw
    else:
        m = 0.0
    if d != d and sll > 0.0:
        d = (sxl - m * sl) / sll
    return d, m


def _legacy_try(x, w, fd, fm, asym, lo, hi, near, best):
    """The best (error, d bits, m bits, codes) below ``best`` among the fp16 values within
    ``near`` steps of ``(fd, fm)``, or None."""
    found = None
    for kd in range(-near, near + 1):
        cdh = _half_near(fd, kd)
        if cdh is None or _half_value(cdh) == 0:
            continue
        for km in (range(-near, near + 1) if asym else (0,)):
            cmh = _half_near(fm, km) if asym else 0
            if cmh is None:
                continue
            e, L = _legacy_err(x, w, _half_value(cdh), _half_value(cmh), asym, lo, hi)
            if e < best:
                best, found = e, (e, cdh, cmh, L)
    return found


def search_legacy(x, w, o, type_name, rounds, trials):
    """One legacy block: (new bytes, reference error, final error)."""
    lo, hi, asym, _, _ = LEGACY[type_name]
    hd, hm, L = _legacy_read(o, type_name)
    m = _half_value(hm) if asym else _f32(0)
    best = _legacy_err(x, w, _half_value(hd), m, asym, lo, hi, L)[0]
    e_ref = best
    changed = False
    v = x.astype(np.float64)
    sw, sx = _total(w), _total(w * v)
    vmin, vmax = float(v.min()), float(v.max())
    mx = float(v[np.argmax(np.abs(v))])  # the first of the largest magnitude
    if vmax > vmin and best > 0.0:
        for t in range(trials if asym else 2 * trials):
            step = 0.5 * float(t if asym else t // 2) - 0.5
            if asym:
                d0, m0 = (vmax - vmin) / (float(hi) - step), vmin
            else:
                d0, m0 = (mx / (float(lo) + step) if t % 2 == 0 else mx / (float(hi) - step)), 0.0
            if not d0 != 0.0:
                continue
            codes = _nearest((v - m0) * (1.0 / d0), lo, hi)
            fd, fm = _legacy_fit(v, w, codes, asym, m0, sw, sx)
            if fd != fd:
                continue
            found = _legacy_try(x, w, fd, fm, asym, lo, hi, 0, best)
            if found is not None:
                best, hd, hm, L = found
                changed = True
    for _ in range(rounds):
        if best == 0.0:
            break
        fd, fm = _legacy_fit(v, w, L, asym, float(_half_value(hm)) if asym else 0.0, sw, sx)
        if fd != fd:
            break
        found = _legacy_try(x, w, fd, fm, asym, lo, hi, 1, best)
        if found is None:
            break
        best, hd, hm, L = found
        changed = True
    return (_legacy_write(o, type_name, hd, hm, L) if changed else o.copy()), e_ref, best


def search_rows(x, type_name, raw, rounds, trials):
    """The twin of ``_ggml_search.search_blocks``: ``(new raw, err_ref, err_new)`` for rows
    ``x`` (float32, finite) whose reference blocks are ``raw``."""
    t = BLOCK_TYPES[type_name]
    rows, cols = x.shape
    out = raw.copy()
    err_ref = np.zeros(rows)
    err_new = np.zeros(rows)
    for r in range(rows):
        v = x[r].astype(np.float64)
        sigma2 = _total(v * v) / cols
        e0 = e1 = 0.0
        for b in range(cols // t.block_values):
            xb = x[r, b * t.block_values:(b + 1) * t.block_values]
            ob = raw[r, b * t.block_bytes:(b + 1) * t.block_bytes]
            w = weights(xb, type_name, sigma2)
            if type_name in ("Q4_K", "Q5_K"):
                new, a, c = search_qk(xb, w, ob, type_name == "Q5_K", rounds)
            elif type_name == "Q6_K":
                new, a, c = search_q6(xb, w, ob, rounds)
            else:
                new, a, c = search_legacy(xb, w, ob, type_name, rounds, trials)
            out[r, b * t.block_bytes:(b + 1) * t.block_bytes] = new
            e0 += a
            e1 += c
        err_ref[r] = e0
        err_new[r] = e1
    return out, err_ref, err_new
