"""The parallel Numba kernels over rows of GGML blocks: ``encode_blocks`` (float32 rows),
``encode_stored_blocks`` (rows of stored float32, float16 or bfloat16 values, each widened
on the way), ``requant_blocks`` (a batch of tensors of block types, each row decoded and encoded as
another type in one pass), its twin ``requant_legacy_blocks`` for 32-value types only,
and ``decode_blocks``. The block types are runtime arguments (``_ggml_encode.KIND``), so
one compiled kernel serves every type and shape.

Rows are split into parts run in parallel; each part allocates its scratch once (an
allocation per row or per block costs as much as a legacy row's encoding). A row goes
through its steps while it is in cache: decode the source row (``requant_*``), check it
is finite, encode it, decode what was stored and sum the squared error. The legacy
32-value types take the row-at-once helpers of ``_ggml_legacy``/``_ggml_decode``
(vectorized); the others go block by block through ``_ggml_encode``'s helpers. A kernel
that never calls those (``requant_legacy_blocks``) is a fifth of the code, and loads from
Numba's cache in half the time.
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode
from nbwoq._config import REDUCTION, njit, njit_kernel
from nbwoq.formats._ggml_decode import decode_block, decode_legacy
from nbwoq.formats._ggml_encode import (IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, _BB, _BV,
                                        _enc_iq4_nl, _enc_iq4_xs, _enc_q6_k, _enc_qk_asym, _f32_bits)
from nbwoq.formats._ggml_encode_k23 import _enc_q2_k, _enc_q3_k
from nbwoq.formats._ggml_legacy import enc_q4, enc_q5, enc_q8_0

#: Parts the rows of one call are split into: each allocates its scratch once.
_PARTS = 64
#: Rows ``requant_*`` hand out together (rows of different threads share cache lines only at the ends).
_CHUNK = 16
_EXPONENT = np.int32(0x7F800000)
#: Stored float types ``encode_stored_blocks`` widens (its ``stored`` argument).
STORED = {"F32": 0, "F16": 1, "BF16": 2}
_F32, _F16, _BF16 = STORED["F32"], STORED["F16"], STORED["BF16"]


@register_jitable
def _legacy_encoder(kind):
    return kind == Q4_0 or kind == Q4_1 or kind == Q5_0 or kind == Q5_1 or kind == Q8_0


@register_jitable
def _legacy_decoder(kind):
    return _legacy_encoder(kind) or kind == IQ4_NL


@register_jitable
def _encode_block(xb, ob, kind, iq4_ntry, L, xt, wt, Lt, La, st, scales, mins, ls, lm):
    """One block of a K-quant or IQ4 ``kind`` (``_ggml_encode``'s helpers, byte for byte
    llama.cpp's); the legacy types go a row at a time through ``_encode_legacy``."""
    if kind == Q4_K or kind == Q5_K:
        _enc_qk_asym(xb, ob, kind == Q5_K, xt, wt, Lt, La, st, scales, mins, ls, lm)
    elif kind == Q2_K:
        _enc_q2_k(xb, ob, xt, wt, Lt, La, st, scales, mins, L)
    elif kind == Q3_K:
        _enc_q3_k(xb, ob, L, scales)
    elif kind == Q6_K:
        _enc_q6_k(xb, ob, Lt, scales, xt, wt)
    elif kind == IQ4_NL:
        _enc_iq4_nl(xb, ob, L, iq4_ntry)
    elif kind == IQ4_XS:
        _enc_iq4_xs(xb, ob, L, scales)


@register_jitable
def _encode_legacy(x, kind, o, lo, idv):
    """Encode the finite float32 row ``x`` as blocks of the 32-value ``kind`` into ``o``."""
    nb = x.shape[0] // 32
    x2 = x.reshape(nb, 32)
    o2 = o.reshape(nb, _BB[kind])
    if kind == Q4_0 or kind == Q4_1:
        enc_q4(x2, o2, kind == Q4_1, lo, idv)
    elif kind == Q5_0 or kind == Q5_1:
        enc_q5(x2, o2, kind == Q5_1, lo, idv)
    else:
        enc_q8_0(x2, o2)


@register_jitable
def _encode_row(x, kind, iq4_ntry, o, lo, idv, L, xt, wt, Lt, La, st, scales, mins, ls, lm):
    """Encode the finite float32 row ``x`` as blocks of ``kind`` into its bytes ``o``."""
    if _legacy_encoder(kind):
        _encode_legacy(x, kind, o, lo, idv)
        return
    bv = _BV[kind]
    bb = _BB[kind]
    for blk in range(x.shape[0] // bv):
        _encode_block(x[blk * bv:(blk + 1) * bv], o[blk * bb:(blk + 1) * bb], kind, iq4_ntry,
                      L, xt, wt, Lt, La, st, scales, mins, ls, lm)


@register_jitable
def _decode_row(raw, kind, y):
    """``y`` (cols,) float32 <- the blocks of ``kind`` in the row's bytes ``raw``."""
    bv = _BV[kind]
    bb = _BB[kind]
    nb = y.shape[0] // bv
    if _legacy_decoder(kind):
        decode_legacy(raw.reshape(nb, bb), kind, y.reshape(nb, bv))
        return
    for blk in range(nb):
        decode_block(raw[blk * bb:(blk + 1) * bb], kind, y[blk * bv:(blk + 1) * bv])


@register_jitable
def _finite(x):
    """True when the float32 row ``x`` holds no NaN or Inf (an integer max of the exponent bits)."""
    top = np.int32(0)
    for i in range(x.shape[0]):
        top = max(top, np.int32(_f32_bits(x[i]) & _EXPONENT))
    return top != _EXPONENT


@njit(**dict(REDUCTION, fastmath={"reassoc"}))
def _error(x, y):
    """Sums of squared error ``x - y`` and of squared ``x``, in float64. Only these sums
    are reassociated (so that they vectorize; their last bits move, never a stored byte):
    fastmath flags sit on each instruction, and the kernels' codes stay exact."""
    e = np.float64(0)
    n = np.float64(0)
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        dv = v - np.float64(y[i])
        e += dv * dv
        n += v * v
    return e, n


@register_jitable
def _scratch(cols):
    """One part's buffers: the stored values decoded, the legacy block scales and the
    K-quant and IQ4 helpers' arrays."""
    return (np.empty(cols, np.float32), np.empty(cols // 32, np.float32), np.empty(cols // 32, np.float32),
            np.zeros(256, np.int64), np.zeros((32, 8), np.float32), np.zeros((32, 8), np.float32),
            np.zeros((32, 8), np.int32), np.zeros((32, 8), np.int32), np.zeros((16, 8), np.float32),
            np.zeros(16, np.float32), np.zeros(16, np.float32), np.zeros(8, np.int64), np.zeros(8, np.int64))


@register_jitable
def _encode_measure(x, o, kind, iq4_ntry, scratch):
    """Check the row ``x`` is finite, encode it into its bytes ``o`` and measure the error:
    ``(err, norm, bad)``. A row holding NaN or Inf is left as zeros, its sums NaN."""
    y, lo, idv, L, xt, wt, Lt, La, st, scales, mins, ls, lm = scratch
    if not _finite(x):
        o[:] = 0
        return np.nan, np.nan, True
    _encode_row(x, kind, iq4_ntry, o, lo, idv, L, xt, wt, Lt, La, st, scales, mins, ls, lm)
    yr = y[:x.shape[0]]
    _decode_row(o, kind, yr)
    e, n = _error(x, yr)
    return e, n, False


@register_jitable
def _legacy_measure(x, o, kind, y, lo, idv):
    """``_encode_measure`` of a 32-value ``kind`` through the row-at-once helpers alone;
    ``y``, ``lo`` and ``idv`` are scratch of at least a row's values and blocks."""
    nb = x.shape[0] // 32
    if not _finite(x):
        o[:] = 0
        return np.nan, np.nan, True
    _encode_legacy(x, kind, o, lo, idv)
    yr = y[:x.shape[0]]
    decode_legacy(o.reshape(nb, o.shape[0] // nb), kind, yr.reshape(nb, 32))
    e, n = _error(x, yr)
    return e, n, False


@njit_kernel
def encode_blocks(src, kind, iq4_ntry, out, err, norm, bad):
    """Encode every row of ``src`` (rows, cols) float32 into ``out`` (rows, bytes) uint8.

    ``err[r]``/``norm[r]`` (float64) receive the sums of squared error of the stored
    values (decoded as llama.cpp does) and of squared source values. A row holding NaN or
    Inf is flagged in ``bad`` and left as zeros: llama.cpp's bytes are undefined there.
    ``iq4_ntry`` is IQ4_NL's scale search width (-1: ``quantize_row_iq4_nl_ref``).
    """
    rows, cols = src.shape
    parts = min(rows, _PARTS)
    for p in prange(parts):
        scratch = _scratch(cols)
        for r in range(p * rows // parts, (p + 1) * rows // parts):
            err[r], norm[r], bad[r] = _encode_measure(src[r], out[r], kind, iq4_ntry, scratch)


@register_jitable
def _widen_row(raw, stored, x):
    """``x`` (cols,) float32 <- the row's bytes ``raw`` of ``stored`` floats, widened exactly
    (``_codecs.decode``: half as uint16, bfloat16 as int16; one vectorized loop per type)."""
    if stored == _F32:
        v32 = raw.view(np.float32)
        for c in range(x.shape[0]):
            x[c] = v32[c]
    elif stored == _F16:
        v16 = raw.view(np.uint16)
        for c in range(x.shape[0]):
            x[c] = decode(v16[c])
    else:
        b16 = raw.view(np.int16)
        for c in range(x.shape[0]):
            x[c] = decode(b16[c])


@njit_kernel
def encode_stored_blocks(src, stored, kind, iq4_ntry, out, err, norm, bad):
    """``encode_blocks`` of stored float rows: ``src`` (rows, bytes) uint8 holds each row's
    values as ``stored`` floats (``STORED``: float32, IEEE half or bfloat16, little-endian).

    Each row is widened into a row buffer and goes through ``encode_blocks``' steps while
    it is in cache (check, encode, decode, measure): the bytes, ``err``, ``norm`` and
    ``bad`` equal ``encode_blocks`` on the widened float32 rows, without that copy of the
    tensor or a separate scan for NaN and Inf.
    """
    rows = src.shape[0]
    cols = src.shape[1] // (4 if stored == _F32 else 2)
    parts = min(rows, _PARTS)
    legacy = _legacy_encoder(kind)
    for p in prange(parts):
        x = np.empty(cols, np.float32)
        scratch = _scratch(cols)
        for r in range(p * rows // parts, (p + 1) * rows // parts):
            _widen_row(src[r], stored, x)
            if legacy:  # the row-at-once helpers called directly: a tenth faster than through _encode_measure
                err[r], norm[r], bad[r] = _legacy_measure(x, out[r], kind, scratch[0], scratch[1], scratch[2])
            else:
                err[r], norm[r], bad[r] = _encode_measure(x, out[r], kind, iq4_ntry, scratch)


@register_jitable
def _locate(r, t, first_row, start, src_kind, cols, kind, out_start):
    """Global row ``r`` of a batch (its tensor is ``t`` or a later one): ``(t, cols, first
    source byte, source bytes, first result byte, result bytes)``."""
    while r >= first_row[t + 1]:
        t += 1
    n = cols[t]
    i = r - first_row[t]
    src_bytes = n // _BV[src_kind[t]] * _BB[src_kind[t]]
    out_bytes = n // _BV[kind[t]] * _BB[kind[t]]
    return t, n, start[t] + i * src_bytes, src_bytes, out_start[t] + i * out_bytes, out_bytes


@register_jitable
def _batch_layout(first_row, cols):
    """``(rows, widest row, chunks, parts)`` of a batch."""
    rows = first_row[first_row.shape[0] - 1]
    width = 0
    for t in range(cols.shape[0]):
        width = max(width, cols[t])
    chunks = (rows + _CHUNK - 1) // _CHUNK
    return rows, width, chunks, min(chunks, _PARTS)


@njit_kernel
def requant_blocks(data, first_row, start, src_kind, cols, kind, out_start, iq4_ntry, out, err, norm, bad):
    """Re-encode the rows of several tensors of GGML blocks in one call (one launch, one
    split of the work, for a whole batch of tensors).

    Tensor ``t``'s rows are the global rows ``first_row[t]:first_row[t + 1]``; its bytes
    start at ``data[start[t]]`` (blocks of type ``src_kind[t]``, ``cols[t]`` values a row)
    and its result at ``out[out_start[t]]`` (blocks of ``kind[t]``). Each row is decoded
    into a row buffer (never the whole tensor) and goes through ``encode_blocks``' steps,
    so the bytes, ``err``, ``norm`` and ``bad`` (per global row) equal those of
    ``encode_blocks(decode_blocks(raw))`` tensor by tensor. Rows of different types cost
    different times: a part takes every ``parts``-th chunk of ``_CHUNK`` rows, so that the
    threads' (static, contiguous) shares of the parts each hold a fair mix of the batch.
    """
    rows, width, chunks, parts = _batch_layout(first_row, cols)
    for p in prange(parts):
        x = np.empty(width, np.float32)
        scratch = _scratch(width)
        for c in range(p, chunks, parts):
            r0 = c * _CHUNK
            t = np.searchsorted(first_row, r0, side="right") - 1
            for r in range(r0, min(r0 + _CHUNK, rows)):
                t, n, at, size, at_out, size_out = _locate(r, t, first_row, start, src_kind, cols, kind, out_start)
                xr = x[:n]
                _decode_row(data[at:at + size], src_kind[t], xr)
                err[r], norm[r], bad[r] = _encode_measure(xr, out[at_out:at_out + size_out], kind[t], iq4_ntry, scratch)


@njit_kernel
def requant_legacy_blocks(data, first_row, start, src_kind, cols, kind, out_start, out, err, norm, bad):
    """``requant_blocks`` of a batch whose source and result types are all 32-value ones
    (``_legacy_decoder`` and ``_legacy_encoder`` kinds): the same bytes and sums, from a
    kernel without the K-quant and IQ4 encoders, a fifth of the code to load."""
    rows, width, chunks, parts = _batch_layout(first_row, cols)
    for p in prange(parts):
        x = np.empty(width, np.float32)
        y = np.empty(width, np.float32)
        lo = np.empty(width // 32, np.float32)
        idv = np.empty(width // 32, np.float32)
        for c in range(p, chunks, parts):
            r0 = c * _CHUNK
            t = np.searchsorted(first_row, r0, side="right") - 1
            for r in range(r0, min(r0 + _CHUNK, rows)):
                t, n, at, size, at_out, size_out = _locate(r, t, first_row, start, src_kind, cols, kind, out_start)
                xr = x[:n]
                decode_legacy(data[at:at + size].reshape(n // 32, size // (n // 32)), src_kind[t], xr.reshape(n // 32, 32))
                err[r], norm[r], bad[r] = _legacy_measure(xr, out[at_out:at_out + size_out], kind[t], y, lo, idv)


@njit_kernel
def decode_blocks(raw, kind, out):
    """``out`` (rows, cols) float32 <- the blocks of type ``kind`` in ``raw`` (rows, bytes)."""
    rows = out.shape[0]
    parts = min(rows, _PARTS)
    for p in prange(parts):
        for r in range(p * rows // parts, (p + 1) * rows // parts):
            _decode_row(raw[r], kind, out[r])
