"""Packing kernels: every slot width round-trips; GGUF nibble order and GPTQ words."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as hst

from nbwoq.formats import packing


@settings(max_examples=25, deadline=None)
@given(bits=hst.sampled_from([1, 2, 3, 4, 5, 8, 12, 16]), rows=hst.integers(1, 4), cols=hst.integers(1, 37),
       seed=hst.integers(0, 2**31))
def test_pack_unpack_round_trip(bits, rows, cols, seed):
    rng = np.random.default_rng(seed)
    slot = packing.slot_bits(bits)
    qmin = -(2 ** (bits - 1))
    codes = rng.integers(qmin, qmin + 2**bits, (rows, cols)).astype(np.float32)
    scale = np.ones((rows, 1), np.float32)
    zp = np.zeros((rows, 1), np.float32)
    packed = np.empty((rows, packing.packed_cols(cols, slot)), np.uint8)
    err = np.empty(rows)
    norm = np.empty(rows)
    src = codes.copy()  # measure against the codes themselves: error must be 0
    packing.pack_rows(codes, src, scale, zp, cols, np.float32(qmin), slot, np.zeros(1, np.float32), False, True,
                       packed, err, norm)
    assert (err == 0).all()
    out = np.empty((rows, cols), np.float32)
    packing.unpack_rows(packed, scale, zp, cols, np.float32(qmin), slot, np.zeros(1, np.float32), False, out)
    np.testing.assert_array_equal(out, codes)


def test_gguf_q4_nibble_order_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    codes = (np.arange(32, dtype=np.float32) % 13 - 8).reshape(1, 32)
    d16 = np.array([[np.float16(0.5)]]).view(np.uint16)
    out = np.empty((1, 18), np.uint8)
    packing.pack_gguf_rows(codes, codes, d16, d16, packing.Q4_0, out, np.empty(1), np.empty(1))
    # byte j holds value j (low nibble) and j + 16 (high nibble)
    assert out[0, 2 + 1] == (1 % 13) | ((17 % 13) << 4)
    back = gguf.quants.dequantize(out, gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(back.reshape(1, 32), codes * np.float32(0.5))


def test_gptq_words_lowest_bits_first():
    codes = np.arange(16, dtype=np.float32).reshape(1, 16)  # unsigned 4-bit codes 0..15
    out = np.empty((1, 2), np.uint32)
    packing.pack_gptq_rows(codes, np.float32(0), 4, out)
    assert out[0, 0] == 0x76543210 and out[0, 1] == 0xFEDCBA98
    zeros = packing.pack_columns_u32(np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), 4)
    assert zeros.view(np.uint32)[0, 0] == 0x87654321


def _bf16_bits(x):
    """bfloat16 storage of float32 ``x`` (truncated: any bit pattern is a valid input)."""
    return (x.view(np.uint32) >> 16).astype(np.uint16)


_STORAGE = {"F32": lambda x: x, "F16": lambda x: x.astype(np.float16), "BF16": _bf16_bits}


@settings(max_examples=60, deadline=None)
@given(bits=hst.integers(1, 16), scheme=hst.sampled_from(["asym", "sym"]), full_range=hst.booleans(),
       rows=hst.integers(1, 40), cols=hst.integers(1, 70), group=hst.sampled_from([-1, 1, 3, 8, 32, 64]),
       dtype=hst.sampled_from(sorted(_STORAGE)), seed=hst.integers(0, 2**31), spread=hst.sampled_from([1e-3, 1.0, 300.0]))
def test_one_pass_equals_core_then_pack(bits, scheme, full_range, rows, cols, group, dtype, seed, spread):
    """The one-pass writer path gives byte-identical outputs to the core call on the float32
    copy followed by ``pack_rows``: the core is its oracle."""
    from nbwoq.formats.nbwoq_format import NbwoqWriter
    from nbwoq.formats.options import QuantOptions
    from nbwoq.formats.quantizer import Scratch, quantize
    from nbwoq.formats.safetensors_io import TensorInfo

    full_range = full_range and scheme == "sym" and bits >= 2  # the only full-range settings there are
    options = QuantOptions(bits, group, scheme, full_range=full_range)
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * spread).astype(np.float32)
    w[rng.random((rows, cols)) < 0.1] = 0.0  # whole-zero groups take the special case
    stored = _STORAGE[dtype](w)
    info = TensorInfo("w", "-", dtype, (rows, cols), 0, stored.nbytes)
    writer = NbwoqWriter(options, None)
    general, err_a, norm_a = writer.encode(info, stored, dtype, quantize(stored, dtype, options, "w"), Scratch())
    one, err_b, norm_b = writer.quantize_encode(info, stored, dtype, Scratch())
    assert [n for n, _ in general] == [n for n, _ in one]
    for (name, a), (_, b) in zip(general, one):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_allclose([err_b, norm_b], [err_a, norm_a], rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", sorted(_STORAGE))
def test_one_pass_refuses_non_finite_naming_the_row(bad, dtype):
    from nbwoq.formats.nbwoq_format import NbwoqWriter
    from nbwoq.formats.errors import InputError
    from nbwoq.formats.options import QuantOptions
    from nbwoq.formats.quantizer import Scratch, quantize
    from nbwoq.formats.safetensors_io import TensorInfo

    w = np.ones((6, 40), np.float32)
    w[4, 33] = bad
    stored = _STORAGE[dtype](w)
    info = TensorInfo("layers.0.w", "-", dtype, w.shape, 0, stored.nbytes)
    options = QuantOptions(4, 32, "asym")
    with pytest.raises(InputError) as general:
        quantize(stored, dtype, options, info.name)
    with pytest.raises(InputError) as one:
        NbwoqWriter(options, None).quantize_encode(info, stored, dtype, Scratch())
    assert str(one.value) == str(general.value)
    assert "'layers.0.w'" in str(one.value) and "row 4" in str(one.value)
