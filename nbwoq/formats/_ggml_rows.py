"""The parallel Numba kernels over rows of GGML blocks: ``encode_blocks`` and
``decode_blocks``. The block type is a runtime argument (``_ggml_encode.KIND``), so one
compiled kernel serves every type and shape; rows run in parallel."""

import numpy as np
from numba import prange

from nbwoq._config import njit_kernel
from nbwoq.formats._ggml_decode import decode_block
from nbwoq.formats._ggml_encode import (IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, _BB, _BV,
                                        _enc_iq4_nl, _enc_iq4_xs, _enc_q4, _enc_q5, _enc_q6_k, _enc_q8_0,
                                        _enc_qk_asym, block_error)
from nbwoq.formats._ggml_encode_k23 import _enc_q2_k, _enc_q3_k


@njit_kernel
def encode_blocks(src, kind, iq4_ntry, out, err, norm, bad):
    """Encode every row of ``src`` (rows, cols) float32 into ``out`` (rows, bytes) uint8.

    ``err[r]``/``norm[r]`` (float64) receive the sums of squared error of the stored
    values (decoded as llama.cpp does) and of squared source values. A row holding NaN or
    Inf is flagged in ``bad`` and left as zeros: llama.cpp's bytes are undefined there.
    ``iq4_ntry`` is IQ4_NL's scale search width (-1: ``quantize_row_iq4_nl_ref``).
    """
    rows, cols = src.shape
    bv = _BV[kind]
    bb = _BB[kind]
    for r in prange(rows):
        x = src[r]
        o = out[r]
        nonfinite = False
        for c in range(cols):
            nonfinite |= (x[c] - x[c]) != 0
        bad[r] = nonfinite
        if nonfinite:
            o[:] = 0
            err[r] = np.nan
            norm[r] = np.nan
            continue
        L = np.zeros(256, np.int64)
        xt = np.zeros((32, 8), np.float32)
        wt = np.zeros((32, 8), np.float32)
        Lt = np.zeros((32, 8), np.int32)
        La = np.zeros((32, 8), np.int32)
        st = np.zeros((16, 8), np.float32)
        scales = np.zeros(16, np.float32)
        mins = np.zeros(16, np.float32)
        ls = np.zeros(8, np.int64)
        lm = np.zeros(8, np.int64)
        y = np.zeros(256, np.float32)
        e = np.float64(0)
        n = np.float64(0)
        for blk in range(cols // bv):
            xb = x[blk * bv:(blk + 1) * bv]
            ob = o[blk * bb:(blk + 1) * bb]
            if kind == Q4_0 or kind == Q4_1:
                _enc_q4(xb, ob, kind == Q4_1)
            elif kind == Q5_0 or kind == Q5_1:
                _enc_q5(xb, ob, kind == Q5_1)
            elif kind == Q8_0:
                _enc_q8_0(xb, ob)
            elif kind == Q4_K or kind == Q5_K:
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
            decode_block(ob, kind, y)
            e, n = block_error(xb, y, bv, e, n)
        err[r] = e
        norm[r] = n


@njit_kernel
def decode_blocks(raw, kind, out):
    """``out`` (rows, cols) float32 <- the blocks of type ``kind`` in ``raw`` (rows, bytes)."""
    rows, cols = out.shape
    bv = _BV[kind]
    bb = _BB[kind]
    for r in prange(rows):
        for blk in range(cols // bv):
            decode_block(raw[r, blk * bb:(blk + 1) * bb], kind, out[r, blk * bv:(blk + 1) * bv])
