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
from nbwoq._simd import (imin, lane_max, lane_min, lane_sum, load8, load16, nearest_clamp, select, shl, splat8, splat16, store,
                         store_bytes, to_float, trunc_int8, vabs, vsqrt, widen)
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


@register_jitable(inline="always")
def block_error(x, y, n, err, norm):
    """``err + sum((x - y)**2)`` and ``norm + sum(x**2)`` in float64 over the first ``n``
    (a multiple of 8) float32 values of ``x`` and ``y``: 8 partial sums, one per lane,
    instead of one serial chain (a report, not a stored value: the order is free)."""
    e = splat8(np.float64(0))
    s = splat8(np.float64(0))
    for i in range(0, n, 8):
        v = widen(load8(x, i))
        d = v - widen(load8(y, i))
        e += d * d
        s += v * v
    return err + lane_sum(e), norm + lane_sum(s)


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


@register_jitable(inline="always")
def _enc_q4_0(x, o):
    """Q4_0 in 8-value vectors: ``d = max / -8`` (``max``: the first value of largest
    magnitude), codes ``MIN(15, (int8_t)(x / d + 8.5))``; byte j holds values j and j + 16."""
    v0 = load8(x, 0)
    v1 = load8(x, 8)
    v2 = load8(x, 16)
    v3 = load8(x, 24)
    a0 = vabs(v0)
    a1 = vabs(v1)
    a2 = vabs(v2)
    a3 = vabs(v3)
    a0 = select(a1 > a0, a1, a0)
    a2 = select(a3 > a2, a3, a2)
    amax = lane_max(select(a2 > a0, a2, a0))
    h0 = select(v1 > v0, v1, v0)
    h2 = select(v3 > v2, v3, v2)
    hi = lane_max(select(h2 > h0, h2, h0))
    l0 = select(v1 < v0, v1, v0)
    l2 = select(v3 < v2, v3, v2)
    lo = lane_min(select(l2 < l0, l2, l0))
    if amax == F0:
        mx = F0
    elif hi == amax and lo == -amax:
        mx, _ = _absmax(x)  # both signs reach the magnitude: the first one decides
    else:
        mx = hi if hi == amax else lo
    d = mx / FM8
    idv = splat8(_ratio(d))
    _put_half(o, 0, d)
    add = splat8(F8_5)
    q0 = imin(trunc_int8(v0 * idv + add), 15)
    q1 = imin(trunc_int8(v1 * idv + add), 15)
    q2 = imin(trunc_int8(v2 * idv + add), 15)
    q3 = imin(trunc_int8(v3 * idv + add), 15)
    low = splat8(np.int32(255))
    store_bytes(o, 2, (q0 & low) | shl(q2, 4))
    store_bytes(o, 10, (q1 & low) | shl(q3, 4))


@register_jitable(inline="always")
def _enc_q4(x, o, asym):
    """Q4_0 (``asym`` False) and Q4_1."""
    if not asym:
        _enc_q4_0(x, o)
        return
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
# The searches run 8 (Q4_K, Q5_K, Q2_K) or 16 (Q6_K) sub-blocks side by side, one per
# vector lane: scratch arrays hold the sub-blocks transposed (value i of lane s at flat
# index ``lanes * i + s``) and every lane sums in C's order, so each lane equals the scalar
# routine bit for bit. A trial's accepted codes are not copied: the winning trial's scale
# and offset are kept and its codes recomputed once at the end (the same operations).


@register_jitable
def _qkx2_error(xt, wt, Lq, n, scale, lo, mad):
    """Per lane: sum of ``w * |diff|`` (``mad``) or ``w * diff**2`` with
    ``diff = scale * l + lo - x``, over the ``n`` rows of codes ``Lq``."""
    err = splat8(F0)
    for i in range(n):
        diff = scale * to_float(load8(Lq, 8 * i)) + lo - load8(xt, 8 * i)
        err += load8(wt, 8 * i) * (vabs(diff) if mad else diff * diff)
    return err


@register_jitable
def _make_qkx2_lanes(xt, wt, n, L, La, nmax, rmin, rdelta, nstep, mad, scale_out, min_out):
    """llama.cpp's ``make_qkx2_quants`` (``mad``: absolute error) of 8 sub-blocks of ``n``
    values at once: ``xt``/``wt`` hold values and weights transposed (n, 8). Codes go to
    ``L`` (n, 8; ``La`` is scratch), each lane's scale and ``the_min`` to ``scale_out``
    and ``min_out``."""
    v = load8(xt, 0)
    w = load8(wt, 0)
    lo = v
    hi = v
    sum_w = w
    sum_x = w * v
    for i in range(1, n):
        v = load8(xt, 8 * i)
        w = load8(wt, 8 * i)
        lo = select(v < lo, v, lo)
        hi = select(v > hi, v, hi)
        sum_w += w
        sum_x += w * v
    zero = splat8(F0)
    lo = select(lo > zero, zero, lo)
    flat = hi == lo  # every code 0, scale 0
    lo_flat = lo
    fn = np.float32(nmax)
    iscale = splat8(fn) / (hi - lo)
    scale = splat8(F1) / iscale
    for i in range(n):
        store(L, 8 * i, nearest_clamp(iscale * (load8(xt, 8 * i) - lo), 0, nmax))
    best = _qkx2_error(xt, wt, L, n, scale, lo, mad)
    best_iscale = iscale
    best_lo = lo
    for step in range(nstep + 1):
        iscale = splat8(rmin + rdelta * np.float32(step) + fn) / (hi - lo)
        sl = zero
        sl2 = zero
        sxl = zero
        for i in range(n):
            v = load8(xt, 8 * i)
            l = nearest_clamp(iscale * (v - lo), 0, nmax)
            store(La, 8 * i, l)
            fl = to_float(l)
            wl = load8(wt, 8 * i) * fl
            sl += wl
            sl2 += wl * fl
            sxl += wl * v
        D = sum_w * sl2 - sl * sl
        this_scale = (sum_w * sxl - sum_x * sl) / D
        this_min = (sl2 * sum_x - sl * sxl) / D
        pos = this_min > zero
        this_scale = select(pos, sxl / sl2, this_scale)
        this_min = select(pos, zero, this_min)
        err = _qkx2_error(xt, wt, La, n, this_scale, this_min, mad)
        take = (D > zero) & (err < best)
        best = select(take, err, best)
        scale = select(take, this_scale, scale)
        best_iscale = select(take, iscale, best_iscale)
        best_lo = select(take, lo, best_lo)
        lo = select(take, this_min, lo)  # later trials start from the accepted min
    none = splat8(np.int32(0))
    for i in range(n):
        l = nearest_clamp(best_iscale * (load8(xt, 8 * i) - best_lo), 0, nmax)
        store(L, 8 * i, select(flat, none, l))
    store(scale_out, 0, select(flat, zero, scale))
    store(min_out, 0, -select(flat, lo_flat, lo))


@register_jitable
def _enc_qk_asym(x, o, five, xt, wt, L, La, st, scales, mins, ls, lm):
    """Q4_K (``five`` False) and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
    The sub-blocks are searched side by side: ``xt[i, j] = x[32 * j + i]``; ``L``/``La``
    int32 (32, 8) and ``st`` float32 (16, 8) are scratch."""
    nmax = 31 if five else 15
    rmin = np.float32(-0.5) if five else np.float32(-1.0)
    nstep = 15 if five else 20
    for j in range(8):
        for i in range(32):
            xt[i, j] = x[32 * j + i]
    s2 = splat8(F0)
    for i in range(32):
        v = load8(xt, 8 * i)
        s2 += v * v
    av_x = vsqrt(s2 / splat8(F32V))
    for i in range(32):
        store(wt, 8 * i, av_x + vabs(load8(xt, 8 * i)))
    _make_qkx2_lanes(xt, wt, 32, L, La, nmax, rmin, F0_1, nstep, False, scales, mins)
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
        st[0, j] = d0 * np.float32(ls[j])
        st[1, j] = m0 * np.float32(lm[j])
    d = load8(st, 0)
    dm = load8(st, 8)
    keep = d == splat8(F0)  # C skips a sub-block whose d is 0 (not one whose d is NaN)
    for i in range(32):
        l = nearest_clamp((load8(xt, 8 * i) + dm) / d, 0, nmax)
        store(L, 8 * i, select(keep, load8(L, 8 * i), l))
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
def _qx_trial(xt, wt, iscale, nmax):
    """One ``make_qx_quants`` trial of 16 lanes: per lane ``sum w*x*l`` and ``sum w*l*l``."""
    slx = splat16(F0)
    sl2 = splat16(F0)
    for i in range(16):
        v = load16(xt, 16 * i)
        w = load16(wt, 16 * i)
        fl = to_float(nearest_clamp(iscale * v, -nmax, nmax - 1))
        slx += w * v * fl
        sl2 += w * fl * fl
    return slx, sl2


@register_jitable
def _make_qx_lanes(xt, wt, L, nmax, scale_out):
    """llama.cpp's ``make_qx_quants`` (``rmse_type = 1``, no weights) of 16 sub-blocks of
    16 values side by side (``xt`` (16, 16) transposed; ``wt`` receives ``x * x``): codes
    plus ``nmax`` to ``L`` (int32, same layout), scales to ``scale_out``."""
    zero = splat16(F0)
    amax = zero
    mx = zero
    for i in range(16):
        v = load16(xt, 16 * i)
        a = vabs(v)
        t = a > amax
        amax = select(t, a, amax)
        mx = select(t, v, mx)
        store(wt, 16 * i, v * v)
    empty = amax < splat16(EPS)
    fn = np.float32(nmax)
    iscale = splat16(np.float32(-nmax)) / mx
    slx, sl2 = _qx_trial(xt, wt, iscale, nmax)
    scale = select(sl2 != zero, slx / sl2, zero)
    best = scale * slx
    best_iscale = iscale
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = splat16(-(fn + F0_1 * np.float32(step))) / mx
        tlx, tl2 = _qx_trial(xt, wt, iscale, nmax)
        take = (tl2 > zero) & (tlx * tlx > best * tl2)
        scale = select(take, tlx / tl2, scale)
        best = select(take, scale * tlx, best)
        best_iscale = select(take, iscale, best_iscale)
    none = splat16(np.int32(0))
    top = splat16(np.int32(nmax))
    for i in range(16):
        l = nearest_clamp(best_iscale * load16(xt, 16 * i), -nmax, nmax - 1) + top
        store(L, 16 * i, select(empty, none, l))
    store(scale_out, 0, select(empty, zero, scale))


@register_jitable
def _enc_q6_k(x, o, L, scales, xt, wt):
    """Q6_K: 16 sub-blocks of 16, 6-bit codes, int8 scales. ``L`` int32 and ``xt``, ``wt``
    float32 (256 values each) are scratch, holding sub-block ``j``'s value ``i`` at
    ``16 * i + j``."""
    for j in range(16):
        for i in range(16):
            xt.flat[16 * i + j] = x[16 * j + i]
    _make_qx_lanes(xt, wt, L, 32, scales)
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
        scales[j] = d0 * np.float32(_int8(np.int64(o[192 + j])))
    d = load16(scales, 0)
    keep = d == splat16(F0)  # C skips a sub-block whose d is 0
    top = splat16(np.int32(32))
    for i in range(16):
        l = nearest_clamp(load16(xt, 16 * i) / d, -32, 31) + top
        store(L, 16 * i, select(keep, load16(L, 16 * i), l))
    for h in range(2):
        for i in range(32):
            # value k sits at 16 * (k % 16) + k // 16
            k = 128 * h + i
            a = L.flat[16 * (k % 16) + k // 16]
            b = L.flat[16 * ((k + 32) % 16) + (k + 32) // 16]
            c = L.flat[16 * ((k + 64) % 16) + (k + 64) // 16]
            e = L.flat[16 * ((k + 96) % 16) + (k + 96) // 16]
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
