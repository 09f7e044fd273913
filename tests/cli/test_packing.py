"""Packing kernels: every slot width round-trips; GGUF nibble order and GPTQ words."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as hst

from nbwoq import _packing


@settings(max_examples=25, deadline=None)
@given(bits=hst.sampled_from([1, 2, 3, 4, 5, 8, 12, 16]), rows=hst.integers(1, 4), cols=hst.integers(1, 37),
       seed=hst.integers(0, 2**31))
def test_pack_unpack_round_trip(bits, rows, cols, seed):
    rng = np.random.default_rng(seed)
    slot = _packing.slot_bits(bits)
    qmin = -(2 ** (bits - 1))
    codes = rng.integers(qmin, qmin + 2**bits, (rows, cols)).astype(np.float32)
    scale = np.ones((rows, 1), np.float32)
    zp = np.zeros((rows, 1), np.float32)
    packed = np.empty((rows, _packing.packed_cols(cols, slot)), np.uint8)
    err = np.empty(rows)
    norm = np.empty(rows)
    src = codes.copy()  # measure against the codes themselves: error must be 0
    _packing.pack_rows(codes, src, scale, zp, cols, np.float32(qmin), slot, np.zeros(1, np.float32), False, True,
                       packed, err, norm)
    assert (err == 0).all()
    out = np.empty((rows, cols), np.float32)
    _packing.unpack_rows(packed, scale, zp, cols, np.float32(qmin), slot, np.zeros(1, np.float32), False, out)
    np.testing.assert_array_equal(out, codes)


def test_gguf_q4_nibble_order_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    codes = (np.arange(32, dtype=np.float32) % 13 - 8).reshape(1, 32)
    d16 = np.array([[np.float16(0.5)]]).view(np.uint16)
    out = np.empty((1, 18), np.uint8)
    _packing.pack_gguf_rows(codes, codes, d16, d16, _packing.Q4_0, out, np.empty(1), np.empty(1))
    # byte j holds value j (low nibble) and j + 16 (high nibble)
    assert out[0, 2 + 1] == (1 % 13) | ((17 % 13) << 4)
    back = gguf.quants.dequantize(out, gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(back.reshape(1, 32), codes * np.float32(0.5))


def test_gptq_words_lowest_bits_first():
    codes = np.arange(16, dtype=np.float32).reshape(1, 16)  # unsigned 4-bit codes 0..15
    out = np.empty((1, 2), np.uint32)
    _packing.pack_gptq_rows(codes, np.float32(0), 4, out)
    assert out[0, 0] == 0x76543210 and out[0, 1] == 0xFEDCBA98
    zeros = _packing.pack_columns_u32(np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), 4)
    assert zeros.view(np.uint32)[0, 0] == 0x87654321
