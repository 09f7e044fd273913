"""Encoding Q2_K and Q3_K blocks as llama.cpp's ``quantize_row_q2_K_ref`` and
``quantize_row_q3_K_ref`` do, bit for bit (Numba helpers of ``_ggml_rows``; the slow twins
are in ``_ggml_reference``)."""

import numpy as np
from numba.extending import register_jitable

from nbwoq.formats._ggml_encode import (EPS, F0, F0_1, F1, F15, _absmax, _get_half, _int8, _make_qkx2_lanes,
                                        _nearest_int, _put_half, largest_pair)

FM4, FM32, FM0_5 = np.float32(-4), np.float32(-32), np.float32(-0.5)


@register_jitable
def _pack_2bit(o, at, L):
    """Byte ``at + 32 * h + l`` holds the codes of values ``128 * h + l + 32 * k`` at bits ``2k``."""
    for h in range(2):
        for i in range(32):
            b = 128 * h + i
            o[at + 32 * h + i] = np.uint8((L[b] | (L[b + 32] << 2) | (L[b + 64] << 4) | (L[b + 96] << 6)) & 255)


@register_jitable
def _enc_q2_k(x, o, xt, wt, Lt, La, st, scales, mins, L):
    """Q2_K: 16 sub-blocks of 16, 2-bit codes, 4-bit scales and mins (absolute-error fit)."""
    for g in range(2):
        for i in range(16):
            for s in range(8):
                v = x[16 * (8 * g + s) + i]
                xt[i, s] = v
                wt[i, s] = abs(v)
        _make_qkx2_lanes(xt, wt, 16, Lt, La, 3, FM0_5, F0_1, 15, True, scales[8 * g:8 * g + 8], mins[8 * g:8 * g + 8])
        for s in range(8):
            for i in range(16):
                L[16 * (8 * g + s) + i] = Lt[i, s]
    max_scale, max_min = largest_pair(scales, mins, 16)
    if max_scale > F0:
        iscale = F15 / max_scale
        for j in range(16):
            o[j] = np.uint8(_nearest_int(iscale * scales[j]) & 255)
        _put_half(o, 80, max_scale / F15)
    else:
        for j in range(16):
            o[j] = 0
        _put_half(o, 80, F0)
    if max_min > F0:
        iscale = F15 / max_min
        for j in range(16):
            o[j] = np.uint8((np.int64(o[j]) | (_nearest_int(iscale * mins[j]) << 4)) & 255)
        _put_half(o, 82, max_min / F15)
    else:
        _put_half(o, 82, F0)
    d0 = _get_half(o, 80)
    m0 = _get_half(o, 82)
    for j in range(16):
        d = d0 * np.float32(np.int64(o[j]) & 15)
        if d == F0:
            continue
        dm = m0 * np.float32(np.int64(o[j]) >> 4)
        for i in range(16):
            L[16 * j + i] = max(0, min(3, _nearest_int((x[16 * j + i] + dm) / d)))
    _pack_2bit(o, 16, L)


@register_jitable
def _make_q3(x, L):
    """llama.cpp's ``make_q3_quants`` (nmax 4, ``do_rmse``) of 16 values: codes + 4 into ``L``."""
    mx, amax = _absmax(x)
    if amax < EPS:
        for i in range(16):
            L[i] = 0
        return F0
    iscale = FM4 / mx
    slx = F0
    sl2 = F0
    for i in range(16):
        l = max(-4, min(3, _nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        slx += w * x[i] * np.float32(l)
        sl2 += w * np.float32(l) * np.float32(l)
    for _ in range(5):
        changed = 0
        for i in range(16):
            w = x[i] * x[i]
            fl = np.float32(L[i])
            tlx = slx - w * x[i] * fl
            if tlx > F0:
                tl2 = sl2 - w * fl * fl
                nl = max(-4, min(3, _nearest_int(x[i] * tl2 / tlx)))
                if nl != L[i]:
                    tlx += w * x[i] * np.float32(nl)
                    tl2 += w * np.float32(nl) * np.float32(nl)
                    if tl2 > F0 and tlx * tlx * sl2 > slx * slx * tl2:
                        L[i] = nl
                        slx = tlx
                        sl2 = tl2
                        changed += 1
        if changed == 0:
            break
    for i in range(16):
        L[i] += 4
    return slx / sl2 if sl2 > F0 else F0


@register_jitable
def _enc_q3_k(x, o, L, scales):
    """Q3_K: 16 sub-blocks of 16, 3-bit codes (high bit in ``hmask``), 6-bit signed scales."""
    max_scale = F0
    amax = F0
    for j in range(16):
        s = _make_q3(x[16 * j:16 * j + 16], L[16 * j:16 * j + 16])
        scales[j] = s
        if abs(s) > amax:
            amax = abs(s)
            max_scale = s
    for k in range(12):
        o[96 + k] = 0
    if max_scale != F0:
        iscale = FM32 / max_scale
        for j in range(16):
            l = max(-32, min(31, _int8(_nearest_int(iscale * scales[j])))) + 32  # an int8_t in C
            if j < 8:
                o[96 + j] = np.uint8(l & 15)
            else:
                o[96 + j - 8] |= np.uint8((l & 15) << 4)
            o[104 + j % 4] |= np.uint8((l >> 4) << (2 * (j // 4)))
        _put_half(o, 108, F1 / iscale)
    else:
        _put_half(o, 108, F0)
    d0 = _get_half(o, 108)
    for j in range(16):
        sc = (np.int64(o[96 + j]) & 15) if j < 8 else (np.int64(o[96 + j - 8]) >> 4)
        sc = (sc | (((np.int64(o[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        d = d0 * np.float32(sc)
        if d == F0:
            continue
        for i in range(16):
            L[16 * j + i] = max(-4, min(3, _nearest_int(x[16 * j + i] / d))) + 4
    for k in range(32):
        o[k] = 0
    for j in range(256):
        if L[j] > 3:
            o[j % 32] |= np.uint8(1 << (j // 32))
            L[j] -= 4
    _pack_2bit(o, 32, L)
