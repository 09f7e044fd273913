"""Encoding one GGML block as llama.cpp's data-free ``quantize_row_*_ref`` does, bit for
bit: the Numba helpers of ``_ggml_rows.encode_blocks`` (``_ggml_reference`` is their
slow twin, and the tests hold both to llama.cpp itself).

Every operation that decides a code is float32 in llama.cpp's order, without fastmath:
constants are float32 globals, integers are converted with ``np.float32`` where C
converts them (Numba would otherwise widen to float64), and sums run in C's order.
``_nearest_int`` and ``_cvtt`` reproduce C's conversions as x86 performs them, so even
out-of-range intermediates give llama.cpp's bytes.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, register_jitable

from nbwoq._llvm import float_to_half_bits, half_bits_to_float
from nbwoq.formats.ggml_blocks import BLOCK_TYPES, KVALUES_IQ4NL

#: Block type name -> the kernels' ``kind`` argument.
KIND = {name: i for i, name in enumerate(BLOCK_TYPES)}
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS = (KIND[n] for n in BLOCK_TYPES)
_BV = np.array([t.block_values for t in BLOCK_TYPES.values()], dtype=np.int64)
_BB = np.array([t.block_bytes for t in BLOCK_TYPES.values()], dtype=np.int64)

F0, F1, F2 = np.float32(0), np.float32(1), np.float32(2)
F_HALF, F8_5, F16_5 = np.float32(0.5), np.float32(8.5), np.float32(16.5)
F15, F31, F63, F127 = np.float32(15), np.float32(31), np.float32(63), np.float32(127)
FM8, FM16, FM32, FM128 = np.float32(-8), np.float32(-16), np.float32(-32), np.float32(-128)
F32V, F0_1 = np.float32(32), np.float32(0.1)
MAGIC = np.float32(12582912.0)  # 1.5 * 2**23
EPS = np.float32(1e-15)  # llama.cpp's GROUP_MAX_EPS
FLT_MAX = np.float32(np.finfo(np.float32).max)
KV = KVALUES_IQ4NL.astype(np.float32)
#: ``MID2[j]`` = level j-1 + level j: IQ4's nearest level by comparing 2x with these.
MID2 = np.concatenate([[np.float32(0)], KVALUES_IQ4NL[:-1].astype(np.float32) + KVALUES_IQ4NL[1:]]).astype(np.float32)


@intrinsic
def _f32_bits(typingctx, value):
    """The int32 bit pattern of float32 ``value``."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(value), codegen


@register_jitable(inline="always")
def largest_magnitude(values, n):
    """The first of ``values[:n]`` with the largest magnitude (0 when all are 0), and that
    magnitude: the super-block scale rule of Q6_K and IQ4_XS."""
    best = F0
    magnitude = F0
    for j in range(n):
        if abs(values[j]) > magnitude:
            magnitude = abs(values[j])
            best = values[j]
    return best, magnitude


@register_jitable(inline="always")
def largest_pair(a, b, n):
    """The largest of ``a[:n]`` and of ``b[:n]``, each at least 0: the super-block scale
    and min of Q2_K, Q4_K and Q5_K."""
    max_a = F0
    max_b = F0
    for j in range(n):
        if a[j] > max_a:
            max_a = a[j]
        if b[j] > max_b:
            max_b = b[j]
    return max_a, max_b


@register_jitable
def _nearest_int(v):
    """llama.cpp's ``nearest_int``: add 1.5 * 2**23, read the low mantissa bits."""
    return np.int64(_f32_bits(v + MAGIC) & 0x007FFFFF) - 0x00400000


@register_jitable
def _nearest_clamp32(v, hi):
    """``MAX(0, MIN(hi, nearest_int(v)))`` in int32 arithmetic (so that lane loops vectorize)."""
    l = (_f32_bits(v + MAGIC) & np.int32(0x007FFFFF)) - np.int32(0x00400000)
    return max(np.int32(0), min(hi, l))


@register_jitable
def _cvtt(v):
    """C's float -> int conversion as x86 does it (0x80000000 when out of range or NaN)."""
    if v > np.float32(-2147483648.0) and v < np.float32(2147483648.0):
        return np.int64(v)
    return np.int64(-2147483648)


@register_jitable
def _int8(v):
    return ((v & 255) ^ 128) - 128


@register_jitable
def _put_half(o, at, v):
    h = float_to_half_bits(v)
    o[at] = np.uint8(h & 255)
    o[at + 1] = np.uint8(h >> 8)


@register_jitable
def _get_half(o, at):
    return half_bits_to_float(np.uint16(np.uint16(o[at]) | (np.uint16(o[at + 1]) << np.uint16(8))))


@register_jitable
def _ratio(d):
    """``d ? 1.0f/d : 0.0f``."""
    return F1 / d if d != F0 else F0


# -- legacy 32-value blocks -----------------------------------------------------------
@register_jitable
def _absmax(x):
    amax = F0
    mx = F0
    for j in range(x.shape[0]):
        a = abs(x[j])
        if amax < a:
            amax = a
            mx = x[j]
    return mx, amax


@register_jitable
def _minmax(x):
    lo = FLT_MAX
    hi = -FLT_MAX
    for j in range(x.shape[0]):
        if x[j] < lo:
            lo = x[j]
        if x[j] > hi:
            hi = x[j]
    return lo, hi


@register_jitable(inline="always")
def _legacy_scale(x, o, asym, top, neg):
    """A Q4/Q5 block's parameters, stored at the block's start: asym ``d = (hi - lo) / top``
    then the min, sym ``d = absmax / neg`` (signed). Returns ``(lo, 1 / d, first code byte)``."""
    if asym:
        lo, hi = _minmax(x)
        d = (hi - lo) / top
        idv = _ratio(d)
        _put_half(o, 0, d)
        _put_half(o, 2, lo)
        return lo, idv, 4
    mx, _ = _absmax(x)
    d = mx / neg
    idv = _ratio(d)
    _put_half(o, 0, d)
    return F0, idv, 2


@register_jitable
def _enc_q4(x, o, asym):
    """Q4_0 (``asym`` False) and Q4_1."""
    lo, idv, at = _legacy_scale(x, o, asym, F15, FM8)
    add = F_HALF if asym else F8_5
    for j in range(16):
        q0 = min(15, _int8(_cvtt((x[j] - lo) * idv + add))) if asym else min(15, _int8(_cvtt(x[j] * idv + add)))
        q1 = min(15, _int8(_cvtt((x[j + 16] - lo) * idv + add))) if asym else min(15, _int8(_cvtt(x[j + 16] * idv + add)))
        o[at + j] = np.uint8(((q0 & 255) | (q1 << 4)) & 255)


@register_jitable
def _enc_q5(x, o, asym):
    """Q5_0 (``asym`` False) and Q5_1."""
    lo, idv, at = _legacy_scale(x, o, asym, F31, FM16)
    qh = np.int64(0)
    for j in range(16):
        if asym:
            q0 = _cvtt((x[j] - lo) * idv + F_HALF) & 255
            q1 = _cvtt((x[j + 16] - lo) * idv + F_HALF) & 255
        else:
            q0 = min(31, _int8(_cvtt(x[j] * idv + F16_5))) & 255
            q1 = min(31, _int8(_cvtt(x[j + 16] * idv + F16_5))) & 255
        o[at + 4 + j] = np.uint8((q0 & 15) | ((q1 & 15) << 4))
        qh |= ((q0 & 16) >> 4) << j
        qh |= ((q1 & 16) >> 4) << (j + 16)
    for k in range(4):
        o[at + k] = np.uint8((qh >> (8 * k)) & 255)


@register_jitable
def _enc_q8_0(x, o):
    amax = F0
    for j in range(32):
        a = abs(x[j])
        amax = amax if amax > a else a
    d = amax / F127
    idv = _ratio(d)
    _put_half(o, 0, d)
    for j in range(32):
        v = x[j] * idv
        a = abs(v)
        fl = np.floor(a)
        r = fl + np.floor(F2 * (a - fl))  # roundf: half away from zero
        o[2 + j] = np.uint8(_cvtt(-r if v < F0 else r) & 255)


# -- K-quants --------------------------------------------------------------------------
_LANES = 8  # sub-blocks searched side by side: a literal, so LLVM unrolls and vectorizes


@register_jitable
def _make_qkx2_lanes(xt, wt, L, La, nmax, rmin, rdelta, nstep, mad, st, scale_out, min_out):
    """llama.cpp's ``make_qkx2_quants`` (``mad``: absolute error) of the sub-blocks in the
    columns of ``xt`` (n, 8), all at once: every lane keeps its own sums in C's order, so each
    equals the scalar routine bit for bit, and the lane loops vectorize. Codes go to ``L``
    (n, lanes); ``scale_out``/``min_out`` get each lane's scale and ``the_min``."""
    n = xt.shape[0]
    # Lane state lives in the rows of ``st`` indexed in place (one base pointer: LLVM sees
    # the rows cannot overlap and vectorizes the lane loops without runtime alias checks).
    fn = np.float32(nmax)
    n32 = np.int32(nmax)
    for s in range(_LANES):
        st[0, s] = xt[0, s]
        st[1, s] = xt[0, s]
        st[2, s] = wt[0, s]
        st[3, s] = wt[0, s] * xt[0, s]
    for i in range(1, n):
        for s in range(_LANES):
            v = xt[i, s]
            st[0, s] = v if v < st[0, s] else st[0, s]
            st[1, s] = v if v > st[1, s] else st[1, s]
            st[2, s] += wt[i, s]
            st[3, s] += wt[i, s] * v
    for s in range(_LANES):
        st[0, s] = F0 if st[0, s] > F0 else st[0, s]
        st[13, s] = F1 if st[1, s] == st[0, s] else F0  # flat: every code 0, scale 0
        st[4, s] = fn / (st[1, s] - st[0, s])
        st[5, s] = F1 / st[4, s]
        st[6, s] = F0
    for i in range(n):
        for s in range(_LANES):
            l = _nearest_clamp32(st[4, s] * (xt[i, s] - st[0, s]), n32)
            L[i, s] = l
            diff = st[5, s] * np.float32(l) + st[0, s] - xt[i, s]
            st[6, s] += wt[i, s] * (abs(diff) if mad else diff * diff)
    for s in range(_LANES):
        scale_out[s] = F0 if st[13, s] != F0 else st[5, s]
        min_out[s] = st[0, s]
    for step in range(nstep + 1):
        for s in range(_LANES):
            st[4, s] = (rmin + rdelta * np.float32(step) + fn) / (st[1, s] - st[0, s])
            st[7, s] = F0
            st[8, s] = F0
            st[9, s] = F0
        for i in range(n):
            for s in range(_LANES):
                l = _nearest_clamp32(st[4, s] * (xt[i, s] - st[0, s]), n32)
                La[i, s] = l
                wl = wt[i, s] * np.float32(l)
                st[7, s] += wl
                st[8, s] += wl * np.float32(l)
                st[9, s] += wl * xt[i, s]
        for s in range(_LANES):
            D = st[2, s] * st[8, s] - st[7, s] * st[7, s]
            a = (st[2, s] * st[9, s] - st[3, s] * st[7, s]) / D
            b = (st[8, s] * st[3, s] - st[7, s] * st[9, s]) / D
            st[10, s] = st[9, s] / st[8, s] if b > F0 else a
            st[11, s] = F0 if b > F0 else b
            st[12, s] = F0
            st[7, s] = F1 if D > F0 else F0  # reused: this trial counts
        for i in range(n):
            for s in range(_LANES):
                diff = st[10, s] * np.float32(La[i, s]) + st[11, s] - xt[i, s]
                st[12, s] += wt[i, s] * (abs(diff) if mad else diff * diff)
        for s in range(_LANES):
            st[7, s] = F1 if (st[7, s] != F0 and st[12, s] < st[6, s]) else F0
            st[6, s] = st[12, s] if st[7, s] != F0 else st[6, s]
            st[5, s] = st[10, s] if st[7, s] != F0 else st[5, s]
            st[0, s] = st[11, s] if st[7, s] != F0 else st[0, s]  # later trials start from the accepted min
        for i in range(n):
            for s in range(_LANES):
                L[i, s] = La[i, s] if st[7, s] != F0 else L[i, s]
    for s in range(_LANES):
        flat = st[13, s] != F0
        scale_out[s] = F0 if flat else st[5, s]
        min_out[s] = -min_out[s] if flat else -st[0, s]
        if flat:
            for i in range(n):
                L[i, s] = np.int32(0)


@register_jitable
def _qx_trial(x, L, nmax, iscale, store):
    slx = F0
    sl2 = F0
    for i in range(x.shape[0]):
        l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
        if store:
            L[i] = l + nmax
        w = x[i] * x[i]
        fl = np.float32(l)
        slx += w * x[i] * fl
        sl2 += w * fl * fl
    return slx, sl2


@register_jitable
def _make_qx(x, L, nmax):
    """llama.cpp's ``make_qx_quants`` with ``rmse_type = 1`` and no weights."""
    mx, amax = _absmax(x)
    if amax < EPS:
        for i in range(x.shape[0]):
            L[i] = 0
        return F0
    fn = np.float32(nmax)
    slx, sl2 = _qx_trial(x, L, nmax, -fn / mx, True)
    scale = slx / sl2 if sl2 != F0 else F0
    best = scale * slx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fn + F0_1 * np.float32(step)) / mx
        tlx, tl2 = _qx_trial(x, L, nmax, iscale, False)
        if tl2 > F0 and tlx * tlx > best * tl2:
            _qx_trial(x, L, nmax, iscale, True)
            scale = tlx / tl2
            best = scale * tlx
    return scale


@register_jitable
def _enc_qk_asym(x, o, five, xt, wt, L, La, st, scales, mins, ls, lm):
    """Q4_K (``five`` False) and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
    The sub-blocks are searched side by side: ``xt[i, j] = x[32 * j + i]``."""
    nmax = 31 if five else 15
    rmin = np.float32(-0.5) if five else np.float32(-1.0)
    nstep = 15 if five else 20
    for j in range(8):
        for i in range(32):
            xt[i, j] = x[32 * j + i]
    s2 = st[14]
    for j in range(8):
        s2[j] = F0
    for i in range(32):
        for j in range(8):
            s2[j] += xt[i, j] * xt[i, j]
    for j in range(8):
        s2[j] = np.sqrt(s2[j] / F32V)
    for i in range(32):
        for j in range(8):
            wt[i, j] = s2[j] + abs(xt[i, j])
    _make_qkx2_lanes(xt, wt, L, La, nmax, rmin, F0_1, nstep, False, st, scales, mins)
    max_scale, max_min = largest_pair(scales, mins, 8)
    inv_scale = F63 / max_scale if max_scale > F0 else F0
    inv_min = F63 / max_min if max_min > F0 else F0
    for j in range(8):
        ls[j] = min(63, _nearest_int(inv_scale * scales[j]) & 255)
        lm[j] = min(63, _nearest_int(inv_min * mins[j]) & 255)
    _put_half(o, 0, max_scale / F63)
    _put_half(o, 2, max_min / F63)
    for j in range(8):
        if j < 4:
            o[4 + j] = np.uint8(ls[j])
            o[8 + j] = np.uint8(lm[j])
        else:
            o[8 + j] = np.uint8((ls[j] & 15) | ((lm[j] & 15) << 4))
    for j in range(4, 8):
        o[4 + j - 4] |= np.uint8((ls[j] >> 4) << 6)
        o[4 + j] |= np.uint8((lm[j] >> 4) << 6)
    d0 = _get_half(o, 0)
    m0 = _get_half(o, 2)
    for j in range(8):
        d = d0 * np.float32(ls[j])
        if d == F0:
            continue
        dm = m0 * np.float32(lm[j])
        for i in range(32):
            L[i, j] = max(0, min(nmax, _nearest_int((x[32 * j + i] + dm) / d)))
    if five:
        for i in range(32):
            o[16 + i] = 0
        for t in range(4):
            for i in range(32):
                l1 = L[i, 2 * t]
                l2 = L[i, 2 * t + 1]
                o[16 + i] |= np.uint8(((l1 >> 4) << (2 * t)) | ((l2 >> 4) << (2 * t + 1)))
                o[48 + 32 * t + i] = np.uint8((l1 & 15) | ((l2 & 15) << 4))
    else:
        for t in range(4):
            for i in range(32):
                o[16 + 32 * t + i] = np.uint8(L[i, 2 * t] | (L[i, 2 * t + 1] << 4))


@register_jitable
def _enc_q6_k(x, o, L, scales):
    for ib in range(16):
        scales[ib] = _make_qx(x[16 * ib:16 * ib + 16], L[16 * ib:16 * ib + 16], 32)
    max_scale, max_abs = largest_magnitude(scales, 16)
    if max_abs < EPS:
        for k in range(210):
            o[k] = 0
        return
    iscale = FM128 / max_scale
    _put_half(o, 208, F1 / iscale)
    for ib in range(16):
        o[192 + ib] = np.uint8(min(127, _nearest_int(iscale * scales[ib])) & 255)
    d0 = _get_half(o, 208)
    for j in range(16):
        d = d0 * np.float32(_int8(np.int64(o[192 + j])))
        if d == F0:
            continue
        for i in range(16):
            L[16 * j + i] = max(-32, min(31, _nearest_int(x[16 * j + i] / d))) + 32
    for h in range(2):
        for i in range(32):
            a = L[128 * h + i]
            b = L[128 * h + 32 + i]
            c = L[128 * h + 64 + i]
            e = L[128 * h + 96 + i]
            o[64 * h + i] = np.uint8((a & 15) | ((c & 15) << 4))
            o[64 * h + 32 + i] = np.uint8((b & 15) | ((e & 15) << 4))
            o[128 + 32 * h + i] = np.uint8((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6))


# -- IQ4 ---------------------------------------------------------------------------------
@register_jitable
def _best_index(v):
    """Nearest level of ``KV``; a tie goes to the upper one (binary search over ``MID2``).
    NaN gets level 0, as in current llama.cpp (releases before its branch-free search gave
    15); it only arises when float32 sums overflow, and the block's scale is then Inf."""
    v2 = v + v
    idx = 0
    for step in (8, 4, 2, 1):
        if v2 >= MID2[idx + step]:
            idx += step
    return idx


@register_jitable
def _iq4_trial(xb, idv, L, store):
    sqx = F0
    sq2 = F0
    for j in range(32):
        l = _best_index(idv * xb[j])
        if store:
            L[j] = l
        q = KV[l]
        w = xb[j] * xb[j]
        sqx += w * q * xb[j]
        sq2 += w * q * q
    return sqx, sq2


@register_jitable
def _iq4_scale(xb, L, ntry):
    """Scale of one 32-value sub-block (``quantize_row_iq4_nl_impl``, no weights given)."""
    mx, amax = _absmax(xb)
    if amax < EPS:
        for j in range(32):
            L[j] = 0
        return F0
    d = -mx / KV[0] if ntry > 0 else mx / KV[0]
    sqx, sq2 = _iq4_trial(xb, F1 / d, L, True)
    d = sqx / sq2 if sq2 > F0 else F0
    best = d * sqx
    for itry in range(-ntry, ntry + 1):
        tqx, tq2 = _iq4_trial(xb, np.float32(itry + np.int64(KVALUES_IQ4NL[0])) / mx, L, False)
        if tq2 > F0 and tqx * tqx > best * tq2:
            d = tqx / tq2
            best = d * tqx
    return d


@register_jitable
def _put_iq4_qs(o, at, L, nsub):
    for i in range(nsub):
        for j in range(16):
            o[at + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


@register_jitable
def _enc_iq4_nl(x, o, L, ntry):
    d = _iq4_scale(x, L, ntry)
    _put_half(o, 0, d)
    if ntry > 0:
        idv = _ratio(d)
        for j in range(32):
            L[j] = _best_index(idv * x[j])
    _put_iq4_qs(o, 2, L, 1)


@register_jitable
def _enc_iq4_xs(x, o, L, scales):
    for ib in range(8):
        scales[ib] = _iq4_scale(x[32 * ib:32 * ib + 32], L[32 * ib:32 * ib + 32], 7)
    max_scale, _ = largest_magnitude(scales, 8)
    d = -max_scale / F32V
    _put_half(o, 0, d)
    idv = _ratio(d)
    sh = np.int64(0)
    for k in range(4):
        o[4 + k] = 0
    for ib in range(8):
        lv = max(-32, min(31, _nearest_int(idv * scales[ib])))
        idl = _ratio(d * np.float32(lv))
        for j in range(32):
            L[32 * ib + j] = _best_index(idl * x[32 * ib + j])
        lv += 32
        o[4 + ib // 2] |= np.uint8((lv & 15) << (4 * (ib % 2)))
        sh |= (lv >> 4) << (2 * ib)
    o[2] = np.uint8(sh & 255)
    o[3] = np.uint8(sh >> 8)
    _put_iq4_qs(o, 8, L, 8)
