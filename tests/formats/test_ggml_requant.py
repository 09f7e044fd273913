"""Re-encoding GGML blocks in one pass (``requant_rows``) against its two-step twin, the
slow references (``_ggml_reference_decode.decode`` then ``_ggml_reference.encode``), and
the vectorized legacy encoders (``_ggml_legacy``, behind ``encode_rows``) on the values
where llama.cpp's value-by-value loops decide something a reduction could get wrong:
signed zeros, ties of the largest magnitude, subnormal and huge scales."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwoq import NonFiniteError
from nbwoq.formats import _ggml_reference, _ggml_reference_decode
from nbwoq.formats.ggml_blocks import BLOCK_TYPES, SUPPORTED, decode_rows, encode_rows, requant_rows

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def _encoded(rng, name, rows, blocks, scale=1.0):
    """Valid blocks of ``name``: random values encoded by the reference."""
    cols = blocks * BLOCK_TYPES[name].block_values
    x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    return _ggml_reference.encode(x, name)


def _reference(raw, source, target, ntry=-1):
    """The slow two-step twin: reference decode, reference encode, float64 error sums."""
    cols = raw.shape[1] // BLOCK_TYPES[source].block_bytes * BLOCK_TYPES[source].block_values
    x = _ggml_reference_decode.decode(raw, source, cols)
    t = BLOCK_TYPES[target]
    if target == "IQ4_NL" and ntry > 0:
        want = _ggml_reference.encode_iq4_nl(x.reshape(-1, 32), ntry).reshape(x.shape[0], -1)
    else:
        want = _ggml_reference.encode(x, target)
    y = _ggml_reference_decode.decode(want, target, cols)
    d = x.astype(np.float64) - y
    assert cols % t.block_values == 0
    return want, (d * d).sum(axis=1), (x.astype(np.float64) ** 2).sum(axis=1)


@pytest.mark.parametrize("target", SUPPORTED)
@pytest.mark.parametrize("source", SUPPORTED)
def test_requant_equals_reference(source, target):
    rng = np.random.default_rng(abs(hash((source, target))) % 2**32)
    blocks = 256 // BLOCK_TYPES[source].block_values  # one K-quant super-block per row
    raw = _encoded(rng, source, 3, blocks)
    got, err, norm = requant_rows(raw, source, target, return_error=True)
    want, we, wn = _reference(raw, source, target)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(err, we, rtol=1e-9)
    np.testing.assert_allclose(norm, wn, rtol=1e-9)


@pytest.mark.parametrize("source", SUPPORTED)
def test_requant_equals_two_steps(source):
    """Bytes, error and norm equal ``encode_rows(decode_rows(raw))`` exactly (IQ4_NL with
    llama-quantize's scale search too)."""
    rng = np.random.default_rng(7)
    t = BLOCK_TYPES[source]
    raw = _encoded(rng, source, 5, 512 // t.block_values)
    x = decode_rows(raw, source, 512)
    for target in SUPPORTED:
        for search in (False, True):
            got = requant_rows(raw, source, target, return_error=True, iq4_nl_search=search)
            want = encode_rows(x, target, return_error=True, iq4_nl_search=search)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w, err_msg=f"{source} -> {target}")
    got = requant_rows(raw, source, "IQ4_NL", iq4_nl_search=True)
    np.testing.assert_array_equal(got, _reference(raw, source, "IQ4_NL", ntry=7)[0])


def test_requant_reads_readonly_maps_and_fills_out():
    rng = np.random.default_rng(3)
    raw = _encoded(rng, "Q4_1", 4, 8)
    raw.flags.writeable = False
    out = np.full((4, 8 * 18), 7, np.uint8)
    assert requant_rows(raw, "Q4_1", "Q4_0", out=out) is out
    np.testing.assert_array_equal(out, _reference(raw, "Q4_1", "Q4_0")[0])


@pytest.mark.parametrize("half", [0x7C00, 0xFC00, 0x7E00])  # +Inf, -Inf, NaN
def test_requant_names_the_first_nonfinite_row(half):
    raw = _encoded(np.random.default_rng(4), "Q4_1", 5, 2)
    raw[3, 20] = half & 255  # the second block's d
    raw[3, 21] = half >> 8
    raw[4, 2:4] = raw[3, 20:22]  # a later row's m too
    with pytest.raises(NonFiniteError, match="raw: row 3 decodes to NaN or Inf") as info:
        requant_rows(raw, "Q4_1", "Q8_0")
    assert info.value.row == 3


@pytest.mark.parametrize("raw, source, target, match", [
    (np.zeros((2, 20), np.int8), "Q4_1", "Q4_0", "raw must be uint8"),
    (np.zeros((2, 21), np.uint8), "Q4_1", "Q4_0", "positive multiple of 20 bytes"),
    (np.zeros((2, 0), np.uint8), "Q4_1", "Q4_0", "positive multiple of 20 bytes"),
    (np.zeros((2, 40), np.uint8), "Q4_1", "Q4_K", "cols must be a positive multiple of 256"),
    (np.zeros((2, 20), np.uint8), "F16", "Q4_0", "type_name must be one of"),
    (np.zeros((2, 40), np.uint8)[:, ::2], "Q4_1", "Q4_0", "C-contiguous"),
])
def test_requant_rejects(raw, source, target, match):
    with pytest.raises(ValueError, match=match):
        requant_rows(raw, source, target)


def test_requant_rejects_a_wrong_out():
    raw = np.zeros((2, 20), np.uint8)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 18\)"):
        requant_rows(raw, "Q4_1", "Q4_0", out=np.zeros((2, 20), np.uint8))


# -- the vectorized legacy encoders on the values llama.cpp's loops decide ---------------------
def _awkward_blocks(rng, n):
    """Blocks of 32 values built to hit every rule of the scale's max/min: zeros of both
    signs in any order as the minimum, the maximum or everything, the largest magnitude
    held by both signs (in either order), repeated extremes."""
    x = rng.integers(1, 4, (n, 32)).astype(np.float32)
    sign = rng.integers(0, 3, (n, 1))  # 0: both signs, 1: none negative (min 0), 2: none positive (max 0)
    x = np.where(sign == 2, -x, np.where((sign == 0) & (rng.random(x.shape) < 0.5), -x, x)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.float32(-0.0)
    x[rng.random(x.shape) < 0.2] = np.float32(0.0)
    for b in np.flatnonzero(rng.random(n) < 0.3):  # +m and -m both present, in a random order
        i, j = rng.choice(32, 2, replace=False)
        x[b, i], x[b, j] = 5.0, -5.0
    for b in np.flatnonzero(rng.random(n) < 0.1):  # only zeros, of both signs
        x[b] = np.where(rng.random(32) < 0.5, np.float32(-0.0), np.float32(0.0))
    return x


@pytest.mark.parametrize("scale", [1.0, 1e-45, 1e-41, 3e-39, 1e-30, 1e5, 1e30, 6e37])
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_signed_zeros_ties_and_extreme_scales(name, scale):
    rng = np.random.default_rng(abs(hash((name, scale))) % 2**32)
    x = (_awkward_blocks(rng, 512) * np.float32(scale)).reshape(16, 1024)
    with np.errstate(all="ignore"):
        want = _ggml_reference.encode(x, name)
    np.testing.assert_array_equal(encode_rows(x, name), want)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LEGACY), st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-45, -1e-45, 3e38, -3e38]),
                                         min_size=32, max_size=32))
def test_legacy_any_block_of_awkward_values(name, values):
    x = np.array(values, np.float32).reshape(1, 32)
    with np.errstate(all="ignore"):
        want = _ggml_reference.encode(x, name)
    np.testing.assert_array_equal(encode_rows(x, name), want)
