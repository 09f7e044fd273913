"""nbwoq's GGML block codecs against llama.cpp's own ``ggml-quants.c``, compiled on demand
(``ggml_oracle``; skipped without a C compiler or a llama.cpp source)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ggml_oracle
from nbwoq.formats import _ggml_reference
from nbwoq.formats.ggml_blocks import BLOCK_TYPES, SUPPORTED, decode_rows, encode_rows, row_bytes
from test_ggml_blocks import PATTERNS, SCALES, sample, sample_ties

_LIB = []


@pytest.fixture(scope="module")
def lib():
    if not _LIB:
        _LIB.append(ggml_oracle.load())
    if _LIB[0] is None:
        pytest.skip("no C compiler or llama.cpp source for the oracle (see tests/formats/ggml_oracle.py)")
    return _LIB[0]


def _comparable(x, want, name):
    """Blocks on which llama.cpp releases agree. The sdist's IQ4_NL leaves the codes of an
    all-zero block uninitialised (newer llama.cpp writes zeros, as nbwoq does), and its
    IQ4 level search sends NaN to the top level where newer llama.cpp (and nbwoq) send it
    to level 0: NaN arises only when float32 sums overflow (|x| > 1e12 or so), and the
    block's scale is then Inf or NaN."""
    t = BLOCK_TYPES[name]
    blocks = x.reshape(-1, t.block_values)
    keep = np.ones(blocks.shape[0], bool)
    if name == "IQ4_NL":
        keep = np.abs(blocks).max(axis=1) >= np.float32(1e-15)
    if name in ("IQ4_NL", "IQ4_XS"):
        keep &= np.isfinite(want.reshape(-1, t.block_bytes)[:, :2].copy().view(np.float16)[:, 0])
    return np.repeat(keep, t.block_bytes).reshape(x.shape[0], -1)


def _check(lib, x, name):
    want = ggml_oracle.encode(lib, x, name, row_bytes(name, x.shape[1]))
    keep = _comparable(x, want, name)
    got = encode_rows(x, name)
    np.testing.assert_array_equal(np.where(keep, got, 0), np.where(keep, want, 0))
    np.testing.assert_array_equal(np.where(keep, _ggml_reference.encode(x, name), 0), np.where(keep, want, 0))
    # where the codes differ, the stored scales agree
    np.testing.assert_array_equal(got.reshape(-1, BLOCK_TYPES[name].block_bytes)[:, :2],
                                  want.reshape(-1, BLOCK_TYPES[name].block_bytes)[:, :2])


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_encode_equals_llama_cpp(lib, name, pattern):
    rng = np.random.default_rng(abs(hash((name, pattern, 7))) % 2**32)
    for scale in SCALES:
        _check(lib, sample(rng, 4, 3, name, scale, pattern), name)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SUPPORTED), st.integers(1, 4), st.integers(1, 4), st.sampled_from(SCALES),
       st.sampled_from(PATTERNS), st.integers(0, 2**32 - 1))
def test_encode_equals_llama_cpp_property(lib, name, rows, blocks, scale, pattern, seed):
    _check(lib, sample(np.random.default_rng(seed), rows, blocks, name, scale, pattern), name)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SUPPORTED), st.integers(1, 3), st.sampled_from([1e-20, 1.0, 3e5]), st.integers(0, 2**32 - 1))
def test_encode_equals_llama_cpp_on_ties(lib, name, blocks, scale, seed):
    _check(lib, sample_ties(np.random.default_rng(seed), 3, blocks, name, scale), name)


def test_iq4_nl_search_equals_quantize_iq4_nl(lib):
    rng = np.random.default_rng(8)
    for pattern in PATTERNS:
        x = sample(rng, 4, 4, "IQ4_NL", 1.0, pattern)
        want = ggml_oracle.encode_iq4_nl_search(lib, x)
        np.testing.assert_array_equal(encode_rows(x, "IQ4_NL", iq4_nl_search=True), want, err_msg=pattern)


@pytest.mark.parametrize("name", SUPPORTED)
def test_decode_equals_llama_cpp(lib, name):
    t = BLOCK_TYPES[name]
    raw = np.random.default_rng(9).integers(0, 256, (4, 3 * t.block_bytes), dtype=np.uint8)
    want = ggml_oracle.decode(lib, raw, name, 3 * t.block_values)
    np.testing.assert_array_equal(decode_rows(raw, name, 3 * t.block_values), want)
