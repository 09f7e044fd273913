"""Encoding stored float rows in one pass (``encode_stored_rows``: widen, check, encode and
measure a row at a time) against its two-step twin ``encode_rows(float32 copy,
return_error=True)`` and the slow references (``_ggml_reference`` on the widened values,
``_ggml_reference_decode`` for the error sums)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwoq import NonFiniteError
from nbwoq.formats import _ggml_reference, _ggml_reference_decode
from nbwoq.formats.ggml_blocks import BLOCK_TYPES, SUPPORTED, encode_rows, encode_stored_rows

STORED = ("F32", "F16", "BF16")


def _bf16_bits(x):
    """float32 values rounded to bfloat16 (nearest even; finite data), as uint16 bits."""
    b = x.astype(np.float32).view(np.uint32)
    return ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _stored(x, dtype_name):
    """float32 rows ``x`` as a file stores them in ``dtype_name``."""
    if dtype_name == "F32":
        return x.astype(np.float32)
    if dtype_name == "F16":
        return x.astype(np.float16)
    return _bf16_bits(x)


def _widened(values, dtype_name):
    """The independent widening: NumPy's float16 cast, bfloat16 bits shifted into float32."""
    if dtype_name == "BF16":
        return (values.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return values.view(np.float16).astype(np.float32) if dtype_name == "F16" else values.copy()


def _rows(rng, name, rows=5, width=512):
    x = rng.standard_normal((rows, width)).astype(np.float32)
    x[1] *= np.float32(1e-3)  # a small row, and one with zero blocks and exact ties
    x[2, :64] = 0
    x[3] = rng.integers(-8, 8, width).astype(np.float32) / np.float32(4)
    assert width % BLOCK_TYPES[name].block_values == 0
    return x


@pytest.mark.parametrize("dtype_name", STORED)
@pytest.mark.parametrize("name", SUPPORTED)
def test_stored_equals_two_steps_and_the_reference(name, dtype_name):
    rng = np.random.default_rng(abs(hash((name, dtype_name))) % 2**32)
    values = _stored(_rows(rng, name), dtype_name)
    x = _widened(values, dtype_name)
    for search in (False, True):
        got = encode_stored_rows(values, dtype_name, name, iq4_nl_search=search)
        want = encode_rows(x, name, return_error=True, iq4_nl_search=search)
        for g, w in zip(got, want):  # bytes and both sums, exactly
            np.testing.assert_array_equal(g, w, err_msg=f"{dtype_name} -> {name}, search {search}")
    raw, err, norm = encode_stored_rows(values, dtype_name, name)
    np.testing.assert_array_equal(raw, _ggml_reference.encode(x, name))
    d = x.astype(np.float64) - _ggml_reference_decode.decode(raw, name, x.shape[1])
    np.testing.assert_allclose(err, (d * d).sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(norm, (x.astype(np.float64) ** 2).sum(axis=1), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float16])
def test_half_types_take_any_16_bit_view(dtype):
    rng = np.random.default_rng(1)
    x = _rows(rng, "Q4_0", 4, 64)
    for dtype_name in ("F16", "BF16"):
        if dtype_name == "BF16" and dtype == np.float16:
            continue
        values = _stored(x, dtype_name)
        want = encode_stored_rows(values, dtype_name, "Q4_0")
        got = encode_stored_rows(values.view(dtype), dtype_name, "Q4_0")
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["F16", "BF16"]), st.sampled_from(["Q4_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K"]),
       st.lists(st.integers(0, 0xFFFF), min_size=256, max_size=256))
def test_any_finite_bit_patterns(dtype_name, name, bits):
    """Every half and bfloat16 bit pattern (subnormals, both zeros, the largest values)
    widens and encodes as the two-step form; a non-finite one names its row."""
    values = np.array(bits, np.uint16).reshape(1, 256)
    x = _widened(values, dtype_name)
    if not np.isfinite(x).all():
        with pytest.raises(NonFiniteError):
            encode_stored_rows(values, dtype_name, name)
        return
    with np.errstate(all="ignore"):
        want = encode_rows(x, name, return_error=True)
        got = encode_stored_rows(values, dtype_name, name)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype_name, bad", [("F32", np.float32(np.nan)), ("F32", np.float32(-np.inf)),
                                             ("F16", np.uint16(0x7C00)), ("F16", np.uint16(0x7E01)),
                                             ("BF16", np.uint16(0x7F80)), ("BF16", np.uint16(0xFFC1))])
def test_names_the_first_nonfinite_row(dtype_name, bad):
    values = _stored(np.ones((6, 64), np.float32), dtype_name)
    bits = values.view(np.uint32 if dtype_name == "F32" else np.uint16)
    bits[3, 40] = np.asarray(bad).view(bits.dtype)
    bits[5, 0] = bits[3, 40]  # a later row too
    with pytest.raises(NonFiniteError, match="values: row 3 holds NaN or Inf") as info:
        encode_stored_rows(values, dtype_name, "Q4_0")
    assert info.value.row == 3


def test_reads_readonly_maps_and_fills_out():
    x = _stored(_rows(np.random.default_rng(2), "Q6_K", 4, 256), "BF16")
    x.flags.writeable = False
    out = np.full((4, 210), 7, np.uint8)
    raw, _, _ = encode_stored_rows(x, "BF16", "Q6_K", out=out)
    assert raw is out
    np.testing.assert_array_equal(out, encode_rows(_widened(x, "BF16"), "Q6_K"))
    assert encode_stored_rows(np.zeros((0, 32), np.float32), "F32", "Q8_0")[0].shape == (0, 34)


@pytest.mark.parametrize("values, dtype_name, name, match", [
    (np.zeros((2, 32), np.float32), "F64", "Q4_0", "dtype_name must be one of"),
    (np.zeros((2, 32), np.float64), "F32", "Q4_0", "values of F32 must be float32"),
    (np.zeros((2, 32), np.float16), "BF16", "Q4_0", "values of BF16 must be"),
    (np.zeros((2, 32), np.uint32), "F16", "Q4_0", "values of F16 must be"),
    (np.zeros((2, 32), ">f4"), "F32", "Q4_0", "native byte order"),
    (np.zeros(32, np.float32), "F32", "Q4_0", "2-D"),
    (np.zeros((2, 64), np.float32)[:, ::2], "F32", "Q4_0", "C-contiguous"),
    (np.zeros((2, 48), np.float32), "F32", "Q4_0", "cols must be a positive multiple of 32"),
    (np.zeros((2, 32), np.float32), "F32", "Q4_K", "cols must be a positive multiple of 256"),
    (np.zeros((2, 32), np.float32), "F32", "F16", "type_name must be one of"),
    ([[0.0] * 32], "F32", "Q4_0", "must be a NumPy array"),
])
def test_rejects(values, dtype_name, name, match):
    with pytest.raises(ValueError, match=match):
        encode_stored_rows(values, dtype_name, name)


def test_rejects_a_wrong_out():
    with pytest.raises(ValueError, match=r"out must have shape \(2, 18\)"):
        encode_stored_rows(np.zeros((2, 32), np.float32), "F32", "Q4_0", out=np.zeros((2, 20), np.uint8))
