"""Slow, obvious reference decoders of GGML block types: llama.cpp's
``dequantize_row_<type>``, vectorized over blocks, float32 in its order of operations.
``decode(raw, type_name, cols)`` is the twin of ``ggml_blocks.decode_rows``."""

import numpy as np

from nbwoq.formats._ggml_reference import _f, fp16_value
from nbwoq.formats.ggml_blocks import BLOCK_TYPES, KVALUES_IQ4NL, QK_K


def _unpack_scale_min_k4(s):
    s = s.astype(np.int64)
    sc = np.zeros((s.shape[0], 8), np.int64)
    m = np.zeros((s.shape[0], 8), np.int64)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            m[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 15) | ((s[:, j - 4] >> 6) << 4)
            m[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, m


def _half(raw, at):
    return fp16_value(raw[:, at].astype(np.uint16) | raw[:, at + 1].astype(np.uint16) << 8)


def _low_high(qs):
    """Values j (low nibbles) then j + 16 (high nibbles) of 16 bytes."""
    q = qs.astype(np.int64)
    return np.concatenate([q & 15, q >> 4], axis=1)


def _qh32(raw, at):
    h = np.zeros(raw.shape[0], np.int64)
    for k in range(4):
        h |= raw[:, at + k].astype(np.int64) << (8 * k)
    return np.stack([(h >> j) & 1 for j in range(32)], axis=1)


def decode_q4_0(b):
    return _half(b, 0)[:, None] * _f(_low_high(b[:, 2:18]) - 8)


def decode_q4_1(b):
    return _half(b, 0)[:, None] * _f(_low_high(b[:, 4:20])) + _half(b, 2)[:, None]


def decode_q5_0(b):
    q = _low_high(b[:, 6:22]) | _qh32(b, 2) << 4
    return _half(b, 0)[:, None] * _f(q - 16)


def decode_q5_1(b):
    q = _low_high(b[:, 8:24]) | _qh32(b, 4) << 4
    return _half(b, 0)[:, None] * _f(q) + _half(b, 2)[:, None]


def decode_q8_0(b):
    return _half(b, 0)[:, None] * _f(b[:, 2:].view(np.int8))


def _decode_qk_asym(b, qh_at):
    d, dmin = _half(b, 0), _half(b, 2)
    sc, m = _unpack_scale_min_k4(b[:, 4:16])
    qs_at = 16 if qh_at is None else qh_at + 32
    out = np.zeros((b.shape[0], QK_K), np.float32)
    for t in range(4):
        q = b[:, qs_at + 32 * t:qs_at + 32 * t + 32].astype(np.int64)
        for half, code in ((0, q & 15), (1, q >> 4)):
            j = 2 * t + half
            if qh_at is not None:
                code = code + ((b[:, qh_at:qh_at + 32].astype(np.int64) >> j) & 1) * 16
            dl = d * _f(sc[:, j])
            ml = dmin * _f(m[:, j])
            out[:, 32 * j:32 * j + 32] = dl[:, None] * _f(code) - ml[:, None]
    return out


def _codes_2bit(b, at):
    """Q2_K/Q3_K: the 2-bit code of every value (inverse of ``_pack_2bit``)."""
    q = np.zeros((b.shape[0], QK_K), np.int64)
    for h in range(2):
        byte = b[:, at + 32 * h:at + 32 * h + 32].astype(np.int64)
        for k in range(4):
            q[:, 128 * h + 32 * k:128 * h + 32 * k + 32] = (byte >> (2 * k)) & 3
    return q


def decode_q2_k(b):
    sc = b[:, :16].astype(np.int64)
    d, dmin = _half(b, 80), _half(b, 82)
    q = _codes_2bit(b, 16)
    dl = np.repeat(d[:, None] * _f(sc & 15), 16, axis=1)
    ml = np.repeat(dmin[:, None] * _f(sc >> 4), 16, axis=1)
    return dl * _f(q) - ml


def decode_q3_k(b):
    d = _half(b, 108)
    sb = b[:, 96:108].astype(np.int64)
    sc = np.zeros((b.shape[0], 16), np.int64)
    for j in range(16):
        low = (sb[:, j] & 15) if j < 8 else (sb[:, j - 8] >> 4)
        sc[:, j] = (low | ((sb[:, 8 + j % 4] >> (2 * (j // 4))) & 3) << 4) - 32
    q = _codes_2bit(b, 32)
    hm = b[:, :32].astype(np.int64)
    for v in range(QK_K):
        q[:, v] -= np.where((hm[:, v % 32] >> (v // 32)) & 1, 0, 4)
    dl = np.repeat(d[:, None] * _f(sc), 16, axis=1)
    return dl * _f(q)


def decode_q4_k(b):
    return _decode_qk_asym(b, None)


def decode_q5_k(b):
    return _decode_qk_asym(b, 16)


def decode_q6_k(b):
    d = _half(b, 208)
    sc = b[:, 192:208].view(np.int8)
    out = np.zeros((b.shape[0], QK_K), np.float32)
    for h in range(2):
        ql = b[:, 64 * h:64 * h + 64].astype(np.int64)
        qh = b[:, 128 + 32 * h:128 + 32 * h + 32].astype(np.int64)
        parts = ((ql[:, :32] & 15) | ((qh >> 0) & 3) << 4, (ql[:, 32:] & 15) | ((qh >> 2) & 3) << 4,
                 (ql[:, :32] >> 4) | ((qh >> 4) & 3) << 4, (ql[:, 32:] >> 4) | ((qh >> 6) & 3) << 4)
        for p, q in enumerate(parts):
            for half in range(2):
                j = 128 * h + 32 * p + 16 * half
                s = sc[:, 8 * h + 2 * p + half]
                out[:, j:j + 16] = (d * _f(s))[:, None] * _f(q[:, 16 * half:16 * half + 16] - 32)
    return out


def decode_iq4_nl(b):
    return _half(b, 0)[:, None] * KVALUES_IQ4NL.astype(np.float32)[_low_high(b[:, 2:18])]


def decode_iq4_xs(b):
    d = _half(b, 0)
    sh = b[:, 2].astype(np.int64) | b[:, 3].astype(np.int64) << 8
    out = np.zeros((b.shape[0], QK_K), np.float32)
    kv = KVALUES_IQ4NL.astype(np.float32)
    for ib in range(8):
        ls = ((b[:, 4 + ib // 2].astype(np.int64) >> (4 * (ib % 2))) & 15) | ((sh >> (2 * ib)) & 3) << 4
        dl = d * _f(ls - 32)
        out[:, 32 * ib:32 * ib + 32] = dl[:, None] * kv[_low_high(b[:, 8 + 16 * ib:24 + 16 * ib])]
    return out


DECODERS = {
    "Q4_0": decode_q4_0, "Q4_1": decode_q4_1, "Q5_0": decode_q5_0, "Q5_1": decode_q5_1, "Q8_0": decode_q8_0,
    "Q2_K": decode_q2_k, "Q3_K": decode_q3_k, "Q4_K": decode_q4_k, "Q5_K": decode_q5_k, "Q6_K": decode_q6_k,
    "IQ4_NL": decode_iq4_nl, "IQ4_XS": decode_iq4_xs,
}


def decode(raw, type_name, cols):
    """Reference ``decode_rows``: uint8 (rows, bytes per row) -> float32 (rows, cols)."""
    t = BLOCK_TYPES[type_name]
    b = np.ascontiguousarray(raw, dtype=np.uint8)
    with np.errstate(all="ignore"):
        out = DECODERS[type_name](b.reshape(-1, t.block_bytes))
    return out.astype(np.float32).reshape(b.shape[0], cols)


