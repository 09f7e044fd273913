"""Decoding GGML blocks (llama.cpp's ``dequantize_row_*``, in its float32 order): the
helpers of the row kernels (``_ggml_rows``), for decoding, for re-encoding a decoded
source, and for the encoder's error measurement. ``decode_block`` takes one block of
any type; ``decode_legacy`` every block of a row of a 32-value type at once."""

import numpy as np
from numba.extending import register_jitable

from nbwoq._llvm import half_bits_to_float
from nbwoq.formats._ggml_encode import (IQ4_NL, IQ4_XS, KV, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0,
                                         _get_half, _int8)


@register_jitable
def _scale_min_k4(b, j):
    """Sub-block ``j``'s 6-bit scale and min from the 12 bytes at ``b`` (``get_scale_min_k4``)."""
    if j < 4:
        return np.int64(b[j] & 63), np.int64(b[j + 4] & 63)
    sc = np.int64(b[j + 4] & 15) | (np.int64(b[j - 4] >> 6) << 4)
    m = np.int64(b[j + 4] >> 4) | (np.int64(b[j] >> 6) << 4)
    return sc, m


@register_jitable
def decode_block(b, kind, y):
    """Write the values of the block ``b`` (its bytes) of type ``kind`` into ``y``."""
    if kind == Q4_0 or kind == Q4_1 or kind == IQ4_NL:
        d = _get_half(b, 0)
        m = _get_half(b, 2) if kind == Q4_1 else np.float32(0)
        at = 4 if kind == Q4_1 else 2
        for j in range(16):
            lo = np.int64(b[at + j] & 15)
            hi = np.int64(b[at + j] >> 4)
            if kind == Q4_0:
                y[j] = np.float32(lo - 8) * d
                y[j + 16] = np.float32(hi - 8) * d
            elif kind == Q4_1:
                y[j] = np.float32(lo) * d + m
                y[j + 16] = np.float32(hi) * d + m
            else:
                y[j] = d * KV[lo]
                y[j + 16] = d * KV[hi]
    elif kind == Q5_0 or kind == Q5_1:
        d = _get_half(b, 0)
        m = _get_half(b, 2) if kind == Q5_1 else np.float32(0)
        at = 4 if kind == Q5_1 else 2
        qh = np.int64(0)
        for k in range(4):
            qh |= np.int64(b[at + k]) << (8 * k)
        for j in range(16):
            lo = np.int64(b[at + 4 + j] & 15) | (((qh >> j) << 4) & 16)
            hi = np.int64(b[at + 4 + j] >> 4) | ((qh >> (j + 12)) & 16)
            if kind == Q5_0:
                y[j] = np.float32(lo - 16) * d
                y[j + 16] = np.float32(hi - 16) * d
            else:
                y[j] = np.float32(lo) * d + m
                y[j + 16] = np.float32(hi) * d + m
    elif kind == Q8_0:
        d = _get_half(b, 0)
        for j in range(32):
            y[j] = np.float32(_int8(np.int64(b[2 + j]))) * d
    elif kind == Q4_K or kind == Q5_K:
        d = _get_half(b, 0)
        dmin = _get_half(b, 2)
        qs = 48 if kind == Q5_K else 16
        for t in range(4):
            for half in range(2):
                j = 2 * t + half
                sc, m = _scale_min_k4(b[4:16], j)
                dl = d * np.float32(sc)
                ml = dmin * np.float32(m)
                for i in range(32):
                    q = np.int64(b[qs + 32 * t + i])
                    q = (q >> 4) if half else (q & 15)
                    if kind == Q5_K:
                        q += ((np.int64(b[16 + i]) >> j) & 1) * 16
                    y[32 * j + i] = dl * np.float32(q) - ml
    elif kind == Q6_K:
        d = _get_half(b, 208)
        for h in range(2):
            for i in range(32):
                ql0 = np.int64(b[64 * h + i])
                ql1 = np.int64(b[64 * h + 32 + i])
                qh = np.int64(b[128 + 32 * h + i])
                s = 8 * h + i // 16
                q1 = ((ql0 & 15) | (((qh >> 0) & 3) << 4)) - 32
                q2 = ((ql1 & 15) | (((qh >> 2) & 3) << 4)) - 32
                q3 = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) - 32
                q4 = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) - 32
                y[128 * h + i] = d * np.float32(_int8(np.int64(b[192 + s]))) * np.float32(q1)
                y[128 * h + 32 + i] = d * np.float32(_int8(np.int64(b[192 + s + 2]))) * np.float32(q2)
                y[128 * h + 64 + i] = d * np.float32(_int8(np.int64(b[192 + s + 4]))) * np.float32(q3)
                y[128 * h + 96 + i] = d * np.float32(_int8(np.int64(b[192 + s + 6]))) * np.float32(q4)
    elif kind == Q2_K or kind == Q3_K:
        # value v = 128 h + 32 k + 16 s + l: code byte qs[32 h + 16 s + l] >> 2k, scale v // 16
        qs = 16 if kind == Q2_K else 32
        d = _get_half(b, 80 if kind == Q2_K else 108)
        dmin = _get_half(b, 82) if kind == Q2_K else np.float32(0)
        for v in range(256):
            h = v // 128
            k = (v // 32) % 4
            q = (np.int64(b[qs + 32 * h + v % 32]) >> (2 * k)) & 3
            j = v // 16
            if kind == Q2_K:
                sc = np.int64(b[j])
                y[v] = (d * np.float32(sc & 15)) * np.float32(q) - dmin * np.float32(sc >> 4)
            else:
                low = (np.int64(b[96 + j]) & 15) if j < 8 else (np.int64(b[96 + j - 8]) >> 4)
                sc = (low | (((np.int64(b[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
                if ((np.int64(b[v % 32]) >> (v // 32)) & 1) == 0:
                    q -= 4
                y[v] = (d * np.float32(sc)) * np.float32(q)
    elif kind == IQ4_XS:
        d = _get_half(b, 0)
        sh = np.int64(b[2]) | (np.int64(b[3]) << 8)
        for ib in range(8):
            ls = ((np.int64(b[4 + ib // 2]) >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
            dl = d * np.float32(ls - 32)
            for j in range(16):
                q = np.int64(b[8 + 16 * ib + j])
                y[32 * ib + j] = dl * KV[q & 15]
                y[32 * ib + 16 + j] = dl * KV[q >> 4]


@register_jitable
def _half2(raw, b, at):
    """The half at bytes ``at``, ``at + 1`` of block ``b`` of ``raw`` (blocks, bytes), widened."""
    return half_bits_to_float(np.uint16(np.uint16(raw[b, at]) | (np.uint16(raw[b, at + 1]) << np.uint16(8))))


@register_jitable
def decode_legacy(raw, kind, y):
    """``decode_block`` of every block of a 32-value type: ``raw`` (blocks, bytes) into ``y``
    (blocks, 32). Each block's loop runs to a length the compiler does not know (16 or
    32, from ``y``'s shape), so LLVM vectorizes it instead of unrolling it."""
    h = y.shape[1] // 2
    for b in range(raw.shape[0]):
        d = _half2(raw, b, 0)
        if kind == Q4_0:
            for j in range(h):
                q = np.int32(raw[b, 2 + j])
                y[b, j] = np.float32((q & 15) - 8) * d
                y[b, h + j] = np.float32((q >> 4) - 8) * d
        elif kind == Q4_1:
            m = _half2(raw, b, 2)
            for j in range(h):
                q = np.int32(raw[b, 4 + j])
                y[b, j] = np.float32(q & 15) * d + m
                y[b, h + j] = np.float32(q >> 4) * d + m
        elif kind == IQ4_NL:
            for j in range(h):
                q = np.int32(raw[b, 2 + j])
                y[b, j] = d * KV[q & 15]
                y[b, h + j] = d * KV[q >> 4]
        elif kind == Q5_0 or kind == Q5_1:
            at = 4 if kind == Q5_1 else 2
            m = _half2(raw, b, 2) if kind == Q5_1 else np.float32(0)
            off = np.int32(0) if kind == Q5_1 else np.int32(16)
            qh = np.int32(0)
            for k in range(4):
                qh |= np.int32(raw[b, at + k]) << np.int32(8 * k)
            for j in range(h):
                q = np.int32(raw[b, at + 4 + j])
                lo = (q & 15) | (((qh >> j) << 4) & 16)
                hi = (q >> 4) | ((qh >> (j + 12)) & 16)
                if kind == Q5_0:
                    y[b, j] = np.float32(lo - off) * d
                    y[b, h + j] = np.float32(hi - off) * d
                else:
                    y[b, j] = np.float32(lo) * d + m
                    y[b, h + j] = np.float32(hi) * d + m
        else:  # Q8_0
            for j in range(2 * h):
                y[b, j] = np.float32(_int8(np.int64(raw[b, 2 + j]))) * d
