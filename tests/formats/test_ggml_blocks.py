"""GGML block types: the table against gguf-py, the Numba kernels against the reference
twins, both against gguf-py's quantize/dequantize where it has them, round trips and
argument checks. llama.cpp itself is the oracle in ``test_ggml_llama_cpp.py``."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwoq.formats import _ggml_encode, _ggml_reference, _ggml_reference_decode
from nbwoq.formats.ggml_blocks import (BLOCK_TYPES, KVALUES_IQ4NL, SUPPORTED, block_type, decode_rows,
                                       encode_rows, row_bytes)

gguf = pytest.importorskip("gguf")

SCALES = [0.0, 1e-30, 1e-8, 1e-3, 1.0, 1e4, 1e15]


def _qtype(name):
    return gguf.GGMLQuantizationType[name]


def _gguf_quantizes(name):
    try:
        gguf.quants.quantize(np.ones((1, BLOCK_TYPES[name].block_values), np.float32), _qtype(name))
    except NotImplementedError:
        return False
    return True


def sample(rng, rows, blocks, name, scale, pattern):
    """Rows of ``blocks`` blocks of ``name`` in one of the awkward patterns."""
    cols = blocks * BLOCK_TYPES[name].block_values
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if pattern == "negative":
        x = -np.abs(x)
    elif pattern == "positive":
        x = np.abs(x) + np.float32(0.5)
    elif pattern == "zero-blocks":
        x[:, : cols // 2] = 0
    elif pattern == "spike":
        x = np.where(rng.random(x.shape) < 0.9, np.float32(0), x)
    elif pattern == "constant":
        x[:] = np.float32(0.75)
    elif pattern == "integers":  # exact ties in every rounding
        x = rng.integers(-8, 8, x.shape).astype(np.float32) / np.float32(2)
    return (x * np.float32(scale)).astype(np.float32)


PATTERNS = ["normal", "negative", "positive", "zero-blocks", "spike", "constant", "integers"]


def sample_ties(rng, rows, blocks, name, scale):
    """Rows of a few levels of both signs, both zeros among them, in runs: equal
    magnitudes of opposite sign (which one is the block's ``max`` is decided by order),
    flat and all-zero sub-blocks, exact rounding ties."""
    cols = blocks * BLOCK_TYPES[name].block_values
    levels = np.array([-2.0, -1.0, -0.0, 0.0, 1.0, 2.0], np.float32)
    x = rng.choice(levels, (rows, cols))
    run = int(rng.choice([1, 4, 16]))
    x = np.repeat(x[:, ::run], run, axis=1)[:, :cols]
    return (x * np.float32(scale)).astype(np.float32)


# -- the table ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BLOCK_TYPES))
def test_table_matches_gguf(name):
    t = BLOCK_TYPES[name]
    assert gguf.GGML_QUANT_SIZES[_qtype(name)] == (t.block_values, t.block_bytes)
    assert int(_qtype(name)) == t.type_id


def test_kvalues_match_gguf():
    assert tuple(int(v) for v in KVALUES_IQ4NL) == tuple(gguf.quants.IQ4_NL.kvalues)


def test_import_does_not_import_gguf():
    code = ("import sys, numpy as np; import nbwoq; from nbwoq.formats import ggml_blocks as g; "
            "g.decode_rows(g.encode_rows(np.ones((1, 256), np.float32), 'Q4_K'), 'Q4_K', 256); "
            "assert 'gguf' not in sys.modules, 'gguf imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- helpers reproduced from llama.cpp -----------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.floats(-4194303.0, 4194303.0, width=32))
def test_nearest_int_is_round_half_even(v):
    assert int(_ggml_reference.nearest_int(np.float32(v))) == int(np.rint(np.float32(v)))


def test_nearest_int_ties():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)
    assert _ggml_reference.nearest_int(v).tolist() == [0, 2, 2, 0, -2, -2]


@settings(max_examples=200, deadline=None)
@given(st.floats(-300.0, 300.0, width=32))
def test_best_index_is_nearest_level_ties_up(v):
    levels = KVALUES_IQ4NL.astype(np.float64)
    dist = np.abs(levels - v)
    want = int(np.flatnonzero(dist == dist.min())[-1])
    assert int(_ggml_reference.best_index_iq4(np.float32(v))) == want
    assert _ggml_encode._best_index(np.float32(v)) == want


def test_scale_min_k4_packing_round_trips():
    rng = np.random.default_rng(0)
    ls = rng.integers(0, 64, (500, 8))
    lm = rng.integers(0, 64, (500, 8))
    sc, m = _ggml_reference_decode._unpack_scale_min_k4(_ggml_reference._pack_scale_min_k4(ls, lm))
    np.testing.assert_array_equal(sc, ls)
    np.testing.assert_array_equal(m, lm)
    # gguf-py's own unpacking of the same bytes
    gsc, gm = gguf.quants.Q4_K.get_scale_min(_ggml_reference._pack_scale_min_k4(ls, lm))
    np.testing.assert_array_equal(gsc, ls)
    np.testing.assert_array_equal(gm, lm)


# -- kernel == reference == gguf-py ----------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_kernel_equals_reference(name, pattern):
    rng = np.random.default_rng(abs(hash((name, pattern))) % 2**32)
    for scale in SCALES:
        x = sample(rng, 3, 2, name, scale, pattern)
        np.testing.assert_array_equal(encode_rows(x, name), _ggml_reference.encode(x, name), err_msg=f"scale {scale}")


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(SUPPORTED), st.integers(1, 3), st.integers(1, 3), st.sampled_from(SCALES),
       st.sampled_from(PATTERNS), st.integers(0, 2**32 - 1))
def test_kernel_equals_reference_property(name, rows, blocks, scale, pattern, seed):
    x = sample(np.random.default_rng(seed), rows, blocks, name, scale, pattern)
    raw = encode_rows(x, name)
    np.testing.assert_array_equal(raw, _ggml_reference.encode(x, name))
    np.testing.assert_array_equal(decode_rows(raw, name, x.shape[1]), _ggml_reference_decode.decode(raw, name, x.shape[1]))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SUPPORTED), st.integers(1, 3), st.sampled_from([1e-20, 1.0, 3e5]), st.integers(0, 2**32 - 1))
def test_kernel_equals_reference_on_ties(name, blocks, scale, seed):
    x = sample_ties(np.random.default_rng(seed), 3, blocks, name, scale)
    np.testing.assert_array_equal(encode_rows(x, name), _ggml_reference.encode(x, name))


@pytest.mark.parametrize("name", [n for n in SUPPORTED if _gguf_quantizes(n)])
def test_reference_equals_gguf_quantize(name):
    rng = np.random.default_rng(1)
    for pattern in PATTERNS:
        for scale in (1e-3, 1.0, 1e4):
            x = sample(rng, 4, 3, name, scale, pattern)
            want = gguf.quants.quantize(x, _qtype(name))
            np.testing.assert_array_equal(_ggml_reference.encode(x, name), want, err_msg=f"{pattern} {scale}")
            np.testing.assert_array_equal(encode_rows(x, name), want, err_msg=f"{pattern} {scale}")


@pytest.mark.parametrize("name", SUPPORTED)
def test_decode_equals_gguf_dequantize(name):
    """Any bytes at all (Inf and NaN halves included) decode as gguf-py decodes them."""
    t = BLOCK_TYPES[name]
    raw = np.random.default_rng(2).integers(0, 256, (5, 4 * t.block_bytes), dtype=np.uint8)
    with np.errstate(all="ignore"):
        want = gguf.quants.dequantize(raw, _qtype(name))
    got = decode_rows(raw, name, 4 * t.block_values)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_ggml_reference_decode.decode(raw, name, 4 * t.block_values), want)


@pytest.mark.parametrize("name", SUPPORTED)
def test_encoded_decodes_like_gguf(name):
    x = sample(np.random.default_rng(3), 4, 2, name, 1.0, "normal")
    raw = encode_rows(x, name)
    np.testing.assert_array_equal(decode_rows(raw, name, x.shape[1]), gguf.quants.dequantize(raw, _qtype(name)))


# -- round trip ---------------------------------------------------------------------------------
#: Largest |x - decoded| over the largest |x| of its block, on Gaussian data. Legacy types
#: from their rules (Q4_0: the level -8 * d = max is one-sided, so -max is off by d = max/8;
#: Q4_1: half a step of range/15 <= 2 max/30; plus float16 rounding); K/IQ types measured.
BOUND = {"Q4_0": 0.13, "Q4_1": 0.07, "Q5_0": 0.066, "Q5_1": 0.035, "Q8_0": 0.005, "Q2_K": 0.45, "Q3_K": 0.2,
         "Q4_K": 0.1, "Q5_K": 0.05, "Q6_K": 0.03, "IQ4_NL": 0.1, "IQ4_XS": 0.1}


@pytest.mark.parametrize("name", SUPPORTED)
def test_round_trip_error_bounded_and_reported(name):
    t = BLOCK_TYPES[name]
    x = sample(np.random.default_rng(4), 6, 4, name, 1.0, "normal")
    raw, err, norm = encode_rows(x, name, return_error=True)
    y = decode_rows(raw, name, x.shape[1])
    blocks = x.reshape(-1, t.block_values)
    worst = np.abs(blocks - y.reshape(blocks.shape)).max(axis=1) / np.abs(blocks).max(axis=1)
    assert worst.max() <= BOUND[name]
    d = x.astype(np.float64) - y
    np.testing.assert_allclose(err, (d * d).sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(norm, (x.astype(np.float64) ** 2).sum(axis=1), rtol=1e-9)


@pytest.mark.parametrize("name", SUPPORTED)
def test_zero_rows_decode_to_zero(name):
    x = np.zeros((2, BLOCK_TYPES[name].block_values), np.float32)
    raw, err, _ = encode_rows(x, name, return_error=True)
    assert not decode_rows(raw, name, x.shape[1]).any()
    assert not err.any()


def test_q8_0_codes_are_rounded_half_away():
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [127.0, 0.5, -0.5, 1.5]
    raw = encode_rows(x, "Q8_0")
    assert raw[0, 2:6].view(np.int8).tolist() == [127, 1, -1, 2]


def test_readonly_input_is_accepted_and_kept():
    x = sample(np.random.default_rng(5), 2, 1, "Q4_K", 1.0, "normal")
    keep = x.copy()
    x.flags.writeable = False
    np.testing.assert_array_equal(encode_rows(x, "Q4_K"), encode_rows(keep, "Q4_K"))
    np.testing.assert_array_equal(x, keep)


# -- arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, type_name, match", [
    (np.zeros((2, 256), np.float64), "Q4_K", "values must be float32"),
    (np.zeros(256, np.float32), "Q4_K", "values must be 2-D"),
    (np.zeros((2, 512), np.float32)[:, ::2], "Q4_K", "values must be C-contiguous"),
    ([[0.0] * 32], "Q4_0", "values must be a NumPy array"),
    (np.zeros((2, 96), np.float32), "Q4_K", "cols must be a positive multiple of 256"),
    (np.zeros((2, 40), np.float32), "Q4_0", "cols must be a positive multiple of 32"),
    (np.zeros((2, 32), np.float32), "Q4_2", "type_name must be one of"),
    (np.zeros((2, 32), np.float32), None, "type_name must be one of"),
])
def test_encode_rejects(values, type_name, match):
    with pytest.raises(ValueError, match=match):
        encode_rows(values, type_name)


def test_encode_rejects_nonfinite_rows():
    x = np.zeros((3, 32), np.float32)
    x[1, 5] = np.inf
    with pytest.raises(ValueError, match="values: row 1 holds NaN or Inf"):
        encode_rows(x, "Q4_0")
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        encode_rows(x, "Q8_0")


@pytest.mark.parametrize("raw, cols, match", [
    (np.zeros((2, 144), np.int8), 256, "raw must be uint8"),
    (np.zeros(144, np.uint8), 256, "raw must be 2-D"),
    (np.zeros((2, 288), np.uint8)[:, ::2], 256, "raw must be C-contiguous"),
    (np.zeros((2, 145), np.uint8), 256, "raw must have 144 bytes per row"),
    (np.zeros((2, 144), np.uint8), 255, "cols must be a positive multiple of 256"),
    (np.zeros((2, 144), np.uint8), True, "cols must be"),
    (np.zeros((2, 144), np.uint8), -256, "cols must be"),
])
def test_decode_rejects(raw, cols, match):
    with pytest.raises(ValueError, match=match):
        decode_rows(raw, "Q4_K", cols)


def test_row_bytes_and_block_type():
    assert row_bytes("Q6_K", 512) == 420
    assert block_type("IQ4_XS").type_id == 23
    with pytest.raises(ValueError, match="cols must be"):
        row_bytes("Q4_0", 33)
