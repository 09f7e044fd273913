"""Slow, obvious reference encoders of GGML block types.

Each ``encode_<type>(blocks)`` takes float32 blocks ``(n, block_values)`` and returns
their bytes ``(n, block_bytes)`` as llama.cpp's data-free ``quantize_row_<type>_ref``
writes them (``_ggml_reference_decode`` holds the decoders). They work on
all blocks at once but walk the values of a block one by one, so every sum is
accumulated in llama.cpp's order; every operation is float32 (NumPy keeps float32 with
float32 operands; integers are converted with ``_f`` where C converts them), and
per-block branches become masks. Facts come from reading llama.cpp's
``ggml/src/ggml-quants.c``; the tests hold these against llama.cpp itself.

Two of C's conversions are reproduced as the machine does them, because K-quants rely
on them: ``nearest_int`` (add 1.5 * 2**23 and read the low mantissa bits: round half to
even for ``|x| < 2**22``, defined garbage beyond) and the wrap of an ``int`` stored into
a ``uint8_t``/``int8_t``.
"""

import numpy as np

from nbwoq.formats.ggml_blocks import BLOCK_TYPES, KVALUES_IQ4NL, QK_K

_f = np.float32
GROUP_MAX_EPS = _f(1e-15)


def nearest_int(v):
    """llama.cpp's ``nearest_int`` of float32 ``v`` (array), as int64."""
    t = (np.asarray(v, dtype=np.float32) + _f(12582912.0)).view(np.int32).astype(np.int64)
    return (t & 0x007FFFFF) - 0x00400000


def fp16_bits(v):
    """``GGML_FP32_TO_FP16``: round to the nearest half (ties to even); its uint16 bits."""
    with np.errstate(over="ignore"):  # beyond 65504 is Inf, as in llama.cpp
        return np.asarray(v, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_value(bits):
    """``GGML_FP16_TO_FP32`` of uint16 bit patterns."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)


def _u16_bytes(bits):
    """(n,) uint16 -> (n, 2) little-endian bytes."""
    b = np.asarray(bits, dtype=np.uint16)
    return np.stack([(b & 255).astype(np.uint8), (b >> 8).astype(np.uint8)], axis=1)


def _div(a, b):
    """``a / b`` in float32 without warnings (lanes dividing by zero are masked by callers)."""
    with np.errstate(all="ignore"):
        return np.divide(a, b, dtype=np.float32)


def _where(c, a, b):
    return np.where(c, a, b).astype(np.float32)


def _absmax_signed(x):
    """Per row: the first value of largest magnitude (``if (amax < |v|)``), and that magnitude."""
    amax = np.zeros(x.shape[0], np.float32)
    mx = np.zeros(x.shape[0], np.float32)
    for j in range(x.shape[1]):
        v = x[:, j]
        up = np.abs(v) > amax
        amax = _where(up, np.abs(v), amax)
        mx = _where(up, v, mx)
    return mx, amax


def _minmax(x):
    lo = np.full(x.shape[0], np.finfo(np.float32).max, np.float32)
    hi = -lo
    for j in range(x.shape[1]):
        v = x[:, j]
        lo = _where(v < lo, v, lo)
        hi = _where(v > hi, v, hi)
    return lo, hi


def _trunc_int(v):
    """C's float -> int conversion (toward zero) for values in range."""
    with np.errstate(all="ignore"):
        return np.trunc(v).astype(np.int64)


def _nibbles(lo, hi):
    return (np.asarray(lo, np.int64) & 15 | (np.asarray(hi, np.int64) & 15) << 4).astype(np.uint8)


def _qh_bits(q):
    """Bit ``j`` of a little-endian uint32 = bit 4 of ``q[:, j]`` (Q5_0/Q5_1), as 4 bytes."""
    h = np.zeros(q.shape[0], np.int64)
    for j in range(32):
        h |= ((q[:, j] >> 4) & 1) << j
    return np.stack([(h >> (8 * k)) & 255 for k in range(4)], axis=1).astype(np.uint8)


# -- legacy 32-value blocks -----------------------------------------------------------
def encode_q4_0(x):
    mx, _ = _absmax_signed(x)
    d = _div(mx, _f(-8))
    idv = _where(d != 0, _div(_f(1), d), _f(0))
    q = np.minimum(15, _trunc_int(x * idv[:, None] + _f(8.5)) & 255)
    return np.concatenate([_u16_bytes(fp16_bits(d)), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def encode_q4_1(x):
    lo, hi = _minmax(x)
    d = _div(hi - lo, _f(15))
    idv = _where(d != 0, _div(_f(1), d), _f(0))
    q = np.minimum(15, _trunc_int((x - lo[:, None]) * idv[:, None] + _f(0.5)) & 255)
    return np.concatenate([_u16_bytes(fp16_bits(d)), _u16_bytes(fp16_bits(lo)), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def encode_q5_0(x):
    mx, _ = _absmax_signed(x)
    d = _div(mx, _f(-16))
    idv = _where(d != 0, _div(_f(1), d), _f(0))
    q = np.minimum(31, _trunc_int(x * idv[:, None] + _f(16.5)) & 255)
    return np.concatenate([_u16_bytes(fp16_bits(d)), _qh_bits(q), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def encode_q5_1(x):
    lo, hi = _minmax(x)
    d = _div(hi - lo, _f(31))
    idv = _where(d != 0, _div(_f(1), d), _f(0))
    q = _trunc_int((x - lo[:, None]) * idv[:, None] + _f(0.5)) & 255
    return np.concatenate([_u16_bytes(fp16_bits(d)), _u16_bytes(fp16_bits(lo)), _qh_bits(q),
                           _nibbles(q[:, :16], q[:, 16:])], axis=1)


def _roundf(v):
    """C ``roundf``: half away from zero (exact: ``a - floor(a)`` and its double are exact)."""
    a = np.abs(v)
    fl = np.floor(a)
    return (np.sign(v) * (fl + np.floor(_f(2) * (a - fl)))).astype(np.float32)


def encode_q8_0(x):
    amax = np.zeros(x.shape[0], np.float32)
    for j in range(32):
        a = np.abs(x[:, j])
        amax = _where(amax > a, amax, a)  # MAX(amax, |v|)
    d = _div(amax, _f(127))
    idv = _where(d != 0, _div(_f(1), d), _f(0))
    q = _trunc_int(_roundf(x * idv[:, None])) & 255
    return np.concatenate([_u16_bytes(fp16_bits(d)), q.astype(np.uint8)], axis=1)


# -- K-quant searches -----------------------------------------------------------------
def make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """Scale and (negated) minimum of each row of ``x`` (n, k) with levels 0..nmax, fitted
    by weighted least squares over ``nstep + 1`` trial scales; returns (scale, the_min, L)."""
    n, k = x.shape
    with np.errstate(all="ignore"):
        lo = x[:, 0].copy()
        hi = x[:, 0].copy()
        sum_w = w[:, 0].copy()
        sum_x = sum_w * x[:, 0]
        for i in range(1, k):
            lo = _where(x[:, i] < lo, x[:, i], lo)
            hi = _where(x[:, i] > hi, x[:, i], hi)
            sum_w = sum_w + w[:, i]
            sum_x = sum_x + w[:, i] * x[:, i]
        lo = _where(lo > 0, _f(0), lo)
        flat = hi == lo
        iscale = _div(_f(nmax), hi - lo)
        scale = _div(_f(1), iscale)
        L = np.zeros((n, k), np.int64)
        best = np.zeros(n, np.float32)
        for i in range(k):
            L[:, i] = np.clip(nearest_int(iscale * (x[:, i] - lo)), 0, nmax)
            diff = scale * _f(L[:, i]) + lo - x[:, i]
            diff = np.abs(diff) if use_mad else diff * diff
            best = best + w[:, i] * diff
        cur_min = lo
        for step in range(nstep + 1):
            # llama.cpp moves ``min`` to each accepted fit: later trials start from it
            iscale = _div(_f(rmin) + _f(rdelta) * _f(step) + _f(nmax), hi - cur_min)
            la = np.zeros((n, k), np.int64)
            sl = np.zeros(n, np.float32)
            sl2 = np.zeros(n, np.float32)
            sxl = np.zeros(n, np.float32)
            for i in range(k):
                la[:, i] = np.clip(nearest_int(iscale * (x[:, i] - cur_min)), 0, nmax)
                wl = w[:, i] * _f(la[:, i])
                sl = sl + wl
                sl2 = sl2 + wl * _f(la[:, i])
                sxl = sxl + wl * x[:, i]
            D = sum_w * sl2 - sl * sl
            this_scale = _div(sum_w * sxl - sum_x * sl, D)
            this_min = _div(sl2 * sum_x - sl * sxl, D)
            pos = this_min > 0
            this_scale = _where(pos, _div(sxl, sl2), this_scale)
            this_min = _where(pos, _f(0), this_min)
            err = np.zeros(n, np.float32)
            for i in range(k):
                diff = this_scale * _f(la[:, i]) + this_min - x[:, i]
                diff = np.abs(diff) if use_mad else diff * diff
                err = err + w[:, i] * diff
            take = (D > 0) & (err < best)
            L = np.where(take[:, None], la, L)
            best = _where(take, err, best)
            scale = _where(take, this_scale, scale)
            cur_min = _where(take, this_min, cur_min)
        scale = _where(flat, _f(0), scale)
        the_min = -_where(flat, lo, cur_min)
        L = np.where(flat[:, None], 0, L)
    return scale, the_min.astype(np.float32), L


def make_qx_quants(x, nmax):
    """Symmetric scale of each row of ``x`` with levels -nmax..nmax-1, weights ``x**2``
    (``rmse_type = 1``), best of 19 trial scales; returns (scale, L) with L = l + nmax."""
    n, k = x.shape
    with np.errstate(all="ignore"):
        mx, amax = _absmax_signed(x)
        zero = amax < GROUP_MAX_EPS

        def trial(iscale):
            L = np.zeros((n, k), np.int64)
            slx = np.zeros(n, np.float32)
            sl2 = np.zeros(n, np.float32)
            for i in range(k):
                li = np.clip(nearest_int(iscale * x[:, i]), -nmax, nmax - 1)
                L[:, i] = li + nmax
                wi = x[:, i] * x[:, i]
                slx = slx + wi * x[:, i] * _f(li)
                sl2 = sl2 + wi * _f(li) * _f(li)
            return L, slx, sl2

        L, slx, sl2 = trial(_div(_f(-nmax), mx))
        scale = _where(sl2 != 0, _div(slx, sl2), _f(0))
        best = scale * slx
        for step in range(-9, 10):
            if step == 0:
                continue
            la, tlx, tl2 = trial(_div(-(_f(nmax) + _f(0.1) * _f(step)), mx))
            take = (tl2 > 0) & (tlx * tlx > best * tl2)
            L = np.where(take[:, None], la, L)
            scale = _where(take, _div(tlx, tl2), scale)
            best = _where(take, scale * tlx, best)
        scale = _where(zero, _f(0), scale)
        L = np.where(zero[:, None], 0, L)
    return scale, L


def _sumsq(x):
    s = np.zeros(x.shape[0], np.float32)
    for i in range(x.shape[1]):
        s = s + x[:, i] * x[:, i]
    return s


def _pack_scale_min_k4(ls, lm):
    """The 12 bytes of 8 six-bit scales and mins (``get_scale_min_k4``'s layout)."""
    s = np.zeros((ls.shape[0], 12), np.int64)
    for j in range(8):
        if j < 4:
            s[:, j] = ls[:, j]
            s[:, j + 4] = lm[:, j]
        else:
            s[:, j + 4] = (ls[:, j] & 15) | ((lm[:, j] & 15) << 4)
            s[:, j - 4] |= (ls[:, j] >> 4) << 6
            s[:, j] |= (lm[:, j] >> 4) << 6
    return s.astype(np.uint8)


def _encode_qk_asym(x, nmax, rmin, nstep):
    """Q4_K (nmax 15) and Q5_K (nmax 31): scales, mins and codes of 8 sub-blocks of 32."""
    n = x.shape[0]
    L = np.zeros((n, QK_K), np.int64)
    scales = np.zeros((n, 8), np.float32)
    mins = np.zeros((n, 8), np.float32)
    with np.errstate(all="ignore"):
        for j in range(8):
            xs = x[:, 32 * j:32 * j + 32]
            av_x = np.sqrt(_div(_sumsq(xs), _f(32)))
            w = av_x[:, None] + np.abs(xs)
            scales[:, j], mins[:, j], L[:, 32 * j:32 * j + 32] = make_qkx2_quants(xs, w, nmax, rmin, 0.1, nstep, False)
        max_scale, max_min = _largest(scales), _largest(mins)
        inv_scale = _where(max_scale > 0, _div(_f(63), max_scale), _f(0))
        inv_min = _where(max_min > 0, _div(_f(63), max_min), _f(0))
        ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 255)
        lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 255)
        d16 = fp16_bits(_div(max_scale, _f(63)))
        m16 = fp16_bits(_div(max_min, _f(63)))
        for j in range(8):
            d = fp16_value(d16) * _f(ls[:, j])
            dm = fp16_value(m16) * _f(lm[:, j])
            xs = x[:, 32 * j:32 * j + 32]
            q = np.clip(nearest_int(_div(xs + dm[:, None], d[:, None])), 0, nmax)
            L[:, 32 * j:32 * j + 32] = np.where((d != 0)[:, None], q, L[:, 32 * j:32 * j + 32])
    head = np.concatenate([_u16_bytes(d16), _u16_bytes(m16), _pack_scale_min_k4(ls, lm)], axis=1)
    return head, L


def _pack_2bit(L):
    """Q2_K/Q3_K codes: byte ``32 * h + l`` holds values ``128 * h + l + 32 * k`` at bits ``2k``."""
    parts = []
    for j in (0, 128):
        q = L[:, j:j + 32] | L[:, j + 32:j + 64] << 2 | L[:, j + 64:j + 96] << 4 | L[:, j + 96:j + 128] << 6
        parts.append((q & 255).astype(np.uint8))
    return np.concatenate(parts, axis=1)


def encode_q2_k(x):
    n = x.shape[0]
    L = np.zeros((n, QK_K), np.int64)
    scales = np.zeros((n, 16), np.float32)
    mins = np.zeros((n, 16), np.float32)
    with np.errstate(all="ignore"):
        for j in range(16):
            xs = x[:, 16 * j:16 * j + 16]
            scales[:, j], mins[:, j], L[:, 16 * j:16 * j + 16] = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        max_scale, max_min = _largest(scales), _largest(mins)
        pos = max_scale > 0
        sb = np.where(pos[:, None], nearest_int(_div(_f(15), max_scale)[:, None] * scales) & 255, 0)
        d16 = fp16_bits(_where(pos, _div(max_scale, _f(15)), _f(0)))
        posm = max_min > 0
        sb = np.where(posm[:, None], (sb | nearest_int(_div(_f(15), max_min)[:, None] * mins) << 4) & 255, sb)
        m16 = fp16_bits(_where(posm, _div(max_min, _f(15)), _f(0)))
        for j in range(16):
            d = fp16_value(d16) * _f(sb[:, j] & 15)
            dm = fp16_value(m16) * _f(sb[:, j] >> 4)
            q = np.clip(nearest_int(_div(x[:, 16 * j:16 * j + 16] + dm[:, None], d[:, None])), 0, 3)
            L[:, 16 * j:16 * j + 16] = np.where((d != 0)[:, None], q, L[:, 16 * j:16 * j + 16])
    return np.concatenate([sb.astype(np.uint8), _pack_2bit(L), _u16_bytes(d16), _u16_bytes(m16)], axis=1)


def make_q3_quants(x, nmax):
    """llama.cpp's ``make_q3_quants`` with ``do_rmse``: codes -nmax..nmax-1 refined one at a
    time (5 passes at most) by weighted least squares, weights ``x**2``. Returns (scale, L + nmax)."""
    n, k = x.shape
    with np.errstate(all="ignore"):
        mx, amax = _absmax_signed(x)
        zero = amax < GROUP_MAX_EPS
        iscale = _div(_f(-nmax), mx)
        L = np.zeros((n, k), np.int64)
        slx = np.zeros(n, np.float32)
        sl2 = np.zeros(n, np.float32)
        for i in range(k):
            L[:, i] = np.clip(nearest_int(iscale * x[:, i]), -nmax, nmax - 1)
            w = x[:, i] * x[:, i]
            slx = slx + w * x[:, i] * _f(L[:, i])
            sl2 = sl2 + w * _f(L[:, i]) * _f(L[:, i])
        active = np.ones(n, bool)
        for _ in range(5):
            changed = np.zeros(n, bool)
            for i in range(k):
                w = x[:, i] * x[:, i]
                tlx = slx - w * x[:, i] * _f(L[:, i])
                tl2 = sl2 - w * _f(L[:, i]) * _f(L[:, i])
                new = np.clip(nearest_int(_div(x[:, i] * tl2, tlx)), -nmax, nmax - 1)
                tlx = tlx + w * x[:, i] * _f(new)
                tl2 = tl2 + w * _f(new) * _f(new)
                ok = active & (slx - w * x[:, i] * _f(L[:, i]) > 0) & (new != L[:, i])
                ok &= (tl2 > 0) & (tlx * tlx * sl2 > slx * slx * tl2)
                L[:, i] = np.where(ok, new, L[:, i])
                slx = _where(ok, tlx, slx)
                sl2 = _where(ok, tl2, sl2)
                changed |= ok
            active &= changed
        scale = _where(sl2 > 0, _div(slx, sl2), _f(0))
        scale = _where(zero, _f(0), scale)
        L = np.where(zero[:, None], 0, L + nmax)
    return scale, L


def _largest(values):
    """Per row, the largest of ``values`` and 0 (a NaN never wins: llama.cpp's ``>`` loop)."""
    best = np.zeros(values.shape[0], np.float32)
    for j in range(values.shape[1]):
        best = _where(values[:, j] > best, values[:, j], best)
    return best


def _largest_magnitude(scales):
    """Per row, the first scale of largest magnitude (0 when all are 0) and that magnitude."""
    best = np.zeros(scales.shape[0], np.float32)
    magnitude = np.zeros(scales.shape[0], np.float32)
    for j in range(scales.shape[1]):
        a = np.abs(scales[:, j])
        up = a > magnitude
        magnitude = _where(up, a, magnitude)
        best = _where(up, scales[:, j], best)
    return best, magnitude


def encode_q3_k(x):
    n = x.shape[0]
    L = np.zeros((n, QK_K), np.int64)
    scales = np.zeros((n, 16), np.float32)
    with np.errstate(all="ignore"):
        for j in range(16):
            scales[:, j], L[:, 16 * j:16 * j + 16] = make_q3_quants(x[:, 16 * j:16 * j + 16], 4)
        max_scale, amax = _largest_magnitude(scales)
        nz = max_scale != 0
        iscale = _div(_f(-32), max_scale)
        l8 = ((nearest_int(iscale[:, None] * scales) & 255) ^ 128) - 128  # stored in an int8_t
        lv = np.where(nz[:, None], np.clip(l8, -32, 31) + 32, 0)
        sb = np.zeros((n, 12), np.int64)
        for j in range(16):
            if j < 8:
                sb[:, j] |= lv[:, j] & 15
            else:
                sb[:, j - 8] |= (lv[:, j] & 15) << 4
            sb[:, 8 + j % 4] |= (lv[:, j] >> 4) << (2 * (j // 4))
        sb = np.where(nz[:, None], sb, 0)
        d16 = fp16_bits(_where(nz, _div(_f(1), iscale), _f(0)))
        for j in range(16):
            sc = (sb[:, j] & 15) if j < 8 else (sb[:, j - 8] >> 4)
            sc = (sc | ((sb[:, 8 + j % 4] >> (2 * (j // 4))) & 3) << 4) - 32
            d = fp16_value(d16) * _f(sc)
            q = np.clip(nearest_int(_div(x[:, 16 * j:16 * j + 16], d[:, None])), -4, 3) + 4
            L[:, 16 * j:16 * j + 16] = np.where((d != 0)[:, None], q, L[:, 16 * j:16 * j + 16])
    hmask = np.zeros((n, 32), np.int64)
    for j in range(QK_K):
        high = L[:, j] > 3
        hmask[:, j % 32] |= np.where(high, 1 << (j // 32), 0)
        L[:, j] = np.where(high, L[:, j] - 4, L[:, j])
    return np.concatenate([hmask.astype(np.uint8), _pack_2bit(L), sb.astype(np.uint8), _u16_bytes(d16)], axis=1)


def encode_q4_k(x):
    head, L = _encode_qk_asym(x, 15, -1.0, 20)
    qs = np.concatenate([_nibbles(L[:, j:j + 32], L[:, j + 32:j + 64]) for j in range(0, QK_K, 64)], axis=1)
    return np.concatenate([head, qs], axis=1)


def encode_q5_k(x):
    head, L = _encode_qk_asym(x, 31, -0.5, 15)
    qh = np.zeros((x.shape[0], 32), np.int64)
    parts = []
    for t, j in enumerate(range(0, QK_K, 64)):
        l1, l2 = L[:, j:j + 32], L[:, j + 32:j + 64]
        qh |= ((l1 >> 4) & 1) << (2 * t) | ((l2 >> 4) & 1) << (2 * t + 1)
        parts.append(_nibbles(l1, l2))
    return np.concatenate([head, qh.astype(np.uint8)] + parts, axis=1)


def encode_q6_k(x):
    n = x.shape[0]
    L = np.zeros((n, QK_K), np.int64)
    scales = np.zeros((n, 16), np.float32)
    with np.errstate(all="ignore"):
        for ib in range(16):
            scales[:, ib], L[:, 16 * ib:16 * ib + 16] = make_qx_quants(x[:, 16 * ib:16 * ib + 16], 32)
        max_scale, max_abs = _largest_magnitude(scales)
        zero = max_abs < GROUP_MAX_EPS
        iscale = _div(_f(-128), max_scale)
        d16 = fp16_bits(_div(_f(1), iscale))
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
        sc8 = (sc & 255).astype(np.uint8).view(np.int8)
        for j in range(16):
            d = fp16_value(d16) * _f(sc8[:, j])
            xs = x[:, 16 * j:16 * j + 16]
            q = np.clip(nearest_int(_div(xs, d[:, None])), -32, 31) + 32
            L[:, 16 * j:16 * j + 16] = np.where((d != 0)[:, None], q, L[:, 16 * j:16 * j + 16])
    ql, qh = [], []
    for j in (0, 128):
        a, b, c, e = (L[:, j + o:j + o + 32] for o in (0, 32, 64, 96))
        ql += [_nibbles(a, c), _nibbles(b, e)]
        qh.append(((a >> 4) | (b >> 4) << 2 | (c >> 4) << 4 | (e >> 4) << 6).astype(np.uint8))
    out = np.concatenate(ql + qh + [sc8.view(np.uint8), _u16_bytes(d16)], axis=1)
    return np.where(zero[:, None], np.uint8(0), out).astype(np.uint8)


# -- IQ4 -------------------------------------------------------------------------------
def best_index_iq4(v):
    """Index of the level of ``KVALUES_IQ4NL`` nearest ``v``; a tie goes to the upper one
    (llama.cpp compares ``2 * v`` with the sums of neighbouring levels)."""
    v2 = np.asarray(v, np.float32) * _f(2)
    k = KVALUES_IQ4NL.astype(np.int32)
    idx = np.zeros(v2.shape, np.int64)
    for j in range(1, 16):
        idx += v2 >= _f(k[j - 1] + k[j])
    return idx


def _iq4_scales(x, ntry):
    """Per 32-value sub-block of ``x`` (n, 32 * nsub): llama.cpp's weighted scale search
    (``quantize_row_iq4_nl_impl``, no importance matrix). Returns (scales, L)."""
    kv0 = _f(KVALUES_IQ4NL[0])
    kvf = KVALUES_IQ4NL.astype(np.float32)
    n, cols = x.shape
    scales = np.zeros((n, cols // 32), np.float32)
    L = np.zeros((n, cols), np.int64)
    with np.errstate(all="ignore"):
        for ib in range(cols // 32):
            xb = x[:, 32 * ib:32 * ib + 32]
            w = xb * xb
            mx, amax = _absmax_signed(xb)
            zero = amax < GROUP_MAX_EPS
            d = _div(-mx, kv0) if ntry > 0 else _div(mx, kv0)
            idv = _div(_f(1), d)

            def trial(idv):
                lb = best_index_iq4(idv[:, None] * xb)
                sqx = np.zeros(n, np.float32)
                sq2 = np.zeros(n, np.float32)
                for j in range(32):
                    q = kvf[lb[:, j]]
                    sqx = sqx + w[:, j] * q * xb[:, j]
                    sq2 = sq2 + w[:, j] * q * q
                return lb, sqx, sq2

            lb, sqx, sq2 = trial(idv)
            d = _where(sq2 > 0, _div(sqx, sq2), _f(0))
            best = d * sqx
            for itry in range(-ntry, ntry + 1):
                _, tqx, tq2 = trial(_div(_f(itry + int(KVALUES_IQ4NL[0])), mx))
                take = (tq2 > 0) & (tqx * tqx > best * tq2)
                d = _where(take, _div(tqx, tq2), d)
                best = _where(take, d * tqx, best)
            scales[:, ib] = _where(zero, _f(0), d)
            L[:, 32 * ib:32 * ib + 32] = np.where(zero[:, None], 0, lb)
    return scales, L


def _iq4_qs(L):
    return np.concatenate([_nibbles(L[:, 32 * i:32 * i + 16], L[:, 32 * i + 16:32 * i + 32])
                           for i in range(L.shape[1] // 32)], axis=1)


def encode_iq4_nl(x, ntry=-1):
    """IQ4_NL: ``ntry = -1`` is ``quantize_row_iq4_nl_ref``; ``ntry = 7`` is what
    ``quantize_iq4_nl`` (llama-quantize) writes without an importance matrix."""
    scales, L = _iq4_scales(x, ntry)
    if ntry > 0:
        with np.errstate(all="ignore"):
            idv = _where(scales[:, 0] != 0, _div(_f(1), scales[:, 0]), _f(0))
        L = best_index_iq4(idv[:, None] * x)
    return np.concatenate([_u16_bytes(fp16_bits(scales[:, 0])), _iq4_qs(L)], axis=1)


def encode_iq4_xs(x, ntry=7):
    """IQ4_XS: ``quantize_row_iq4_xs_ref`` (= ``quantize_iq4_xs`` without importance matrix)."""
    scales, L = _iq4_scales(x, ntry)
    n = x.shape[0]
    max_scale, _ = _largest_magnitude(scales)
    with np.errstate(all="ignore"):
        d = _div(-max_scale, _f(32))
        idv = _where(d != 0, _div(_f(1), d), _f(0))
        sh = np.zeros(n, np.int64)
        sl = np.zeros((n, 4), np.int64)
        for ib in range(8):
            lv = np.clip(nearest_int(idv * scales[:, ib]), -32, 31)
            dl = d * _f(lv)
            idl = _where(dl != 0, _div(_f(1), dl), _f(0))
            L[:, 32 * ib:32 * ib + 32] = best_index_iq4(idl[:, None] * x[:, 32 * ib:32 * ib + 32])
            lv = lv + 32
            sl[:, ib // 2] |= (lv & 15) << (4 * (ib % 2))
            sh |= (lv >> 4) << (2 * ib)
    return np.concatenate([_u16_bytes(fp16_bits(d)), _u16_bytes(sh), sl.astype(np.uint8), _iq4_qs(L)], axis=1)


ENCODERS = {
    "Q4_0": encode_q4_0, "Q4_1": encode_q4_1, "Q5_0": encode_q5_0, "Q5_1": encode_q5_1, "Q8_0": encode_q8_0,
    "Q2_K": encode_q2_k, "Q3_K": encode_q3_k, "Q4_K": encode_q4_k, "Q5_K": encode_q5_k, "Q6_K": encode_q6_k,
    "IQ4_NL": encode_iq4_nl, "IQ4_XS": encode_iq4_xs,
}


def encode(values, type_name):
    """Reference ``encode_rows``: float32 (rows, cols) -> uint8 (rows, bytes per row)."""
    t = BLOCK_TYPES[type_name]
    x = np.ascontiguousarray(values, dtype=np.float32)
    rows, cols = x.shape
    raw = ENCODERS[type_name](x.reshape(-1, t.block_values))
    return raw.reshape(rows, cols // t.block_values * t.block_bytes)
