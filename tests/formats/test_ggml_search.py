"""nbwoq's GGML search (``--method search``): the kernel against its twin, never worse
than the reference per block (measured here from the decoded values, not from what the
kernel reports), decodable by gguf-py's own dequantizers, and argument checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwoq.formats import _ggml_search, _ggml_search_reference
from nbwoq.formats.ggml_blocks import BLOCK_TYPES, decode_rows, encode_rows, search_rows

gguf = pytest.importorskip("gguf")

SEARCHED = list(_ggml_search.SEARCHED)
PATTERNS = ["normal", "heavy-tail", "positive", "zero-blocks", "spike", "constant", "integers", "tiny-subblocks"]


def sample(seed, rows, blocks, name, scale, pattern):
    rng = np.random.default_rng(seed)
    cols = blocks * BLOCK_TYPES[name].block_values
    x = rng.standard_normal((rows, cols))
    if pattern == "heavy-tail":
        x = rng.standard_t(3, (rows, cols))
    elif pattern == "positive":
        x = np.abs(x) + 0.5
    elif pattern == "zero-blocks":
        x[:, : cols // 2] = 0
    elif pattern == "spike":
        x = np.where(rng.random(x.shape) < 0.9, 0.0, x)
    elif pattern == "constant":
        x[:] = 0.75
    elif pattern == "integers":  # exact ties in every rounding
        x = rng.integers(-8, 8, x.shape) / 2
    elif pattern == "tiny-subblocks":  # sub-blocks of very different sizes
        x *= np.repeat(10.0 ** rng.integers(-3, 1, (rows, cols // 16)), 16, axis=1)
    return (x * scale).astype(np.float32)


def block_weighted_errors(x, name, raw):
    """Weighted squared error of every block of ``raw`` (decoded as llama.cpp decodes it),
    with the weights of the search (the twin's ``weights``): (rows, blocks) float64."""
    t = BLOCK_TYPES[name]
    y = decode_rows(raw, name, x.shape[1]).astype(np.float64)
    out = np.zeros((x.shape[0], x.shape[1] // t.block_values))
    for r in range(x.shape[0]):
        v = x[r].astype(np.float64)
        sigma2 = float(np.sum(v * v)) / x.shape[1]
        for b in range(out.shape[1]):
            s = slice(b * t.block_values, (b + 1) * t.block_values)
            w = _ggml_search_reference.weights(x[r, s], name, sigma2)
            out[r, b] = np.sum(w * (v[s] - y[r, s]) ** 2)
    return out


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(SEARCHED), pattern=st.sampled_from(PATTERNS),
       scale=st.sampled_from([1e-6, 1e-2, 1.0, 300.0]), rows=st.integers(1, 3), blocks=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_kernel_equals_twin(name, pattern, scale, rows, blocks, seed):
    x = sample(seed, rows, blocks * (8 if BLOCK_TYPES[name].block_values == 32 else 1), name, scale, pattern)
    raw = encode_rows(x, name)
    ours = raw.copy()
    before, after, squared, wnorm = search_rows(x, name, ours)
    twin, t_before, t_after = _ggml_search_reference.search_rows(x, name, raw, _ggml_search.ROUNDS,
                                                                 _ggml_search.LEGACY_TRIALS)
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(before, t_before)
    np.testing.assert_array_equal(after, t_after)
    y = decode_rows(ours, name, x.shape[1]).astype(np.float64)
    np.testing.assert_allclose(squared, np.sum((y - x) ** 2, axis=1), rtol=1e-12, atol=0)
    assert np.all(wnorm >= 0) and np.all((wnorm > 0) | (x == 0).all(axis=1))


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(SEARCHED), pattern=st.sampled_from(PATTERNS),
       scale=st.sampled_from([0.0, 1e-30, 1e-8, 1e-3, 1.0, 1e4, 1e15]), seed=st.integers(0, 2**16))
def test_never_worse_than_the_reference_per_block(name, pattern, scale, seed):
    x = sample(seed, 3, 16 if BLOCK_TYPES[name].block_values == 32 else 2, name, scale, pattern)
    raw = encode_rows(x, name)
    searched = raw.copy()
    before, after, _, _ = search_rows(x, name, searched)
    with np.errstate(all="ignore"):
        e_ref = block_weighted_errors(x, name, raw)
        e_new = block_weighted_errors(x, name, searched)
    ok = np.isfinite(e_ref)
    assert np.all(e_new[ok] <= e_ref[ok] * (1 + 1e-12) + 1e-300)
    # a block whose reference decodes to Inf or NaN (values beyond fp16) is left as it is,
    # or replaced by one that decodes to finite values
    t = BLOCK_TYPES[name]
    for r, b in zip(*np.nonzero(~ok)):
        s = slice(b * t.block_bytes, (b + 1) * t.block_bytes)
        assert np.isfinite(e_new[r, b]) or np.array_equal(searched[r, s], raw[r, s])
    # the kernel's own accounts agree with the decoded values
    fin = ok.all(axis=1)
    np.testing.assert_allclose(before[fin], e_ref[fin].sum(axis=1), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(after[fin], e_new[fin].sum(axis=1), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("name", SEARCHED)
def test_lowers_the_error_of_typical_weights(name):
    """Normal and heavy-tailed weights: every type's search takes a clear share off the
    reference's weighted error (and its plain squared error follows)."""
    x = np.concatenate([sample(1, 16, 8, name, 0.02, "normal"), sample(2, 16, 8, name, 0.02, "heavy-tail")])
    raw = encode_rows(x, name)
    searched = raw.copy()
    before, after, _, _ = search_rows(x, name, searched)
    assert after.sum() < 0.99 * before.sum()
    plain = [np.sum((decode_rows(r, name, x.shape[1]).astype(np.float64) - x) ** 2) for r in (raw, searched)]
    assert plain[1] < plain[0]


@pytest.mark.parametrize("name", SEARCHED)
def test_gguf_py_dequantizes_the_searched_blocks(name):
    x = sample(3, 4, 8 if BLOCK_TYPES[name].block_values == 32 else 2, name, 1.0, "heavy-tail")
    raw = encode_rows(x, name)
    search_rows(x, name, raw)
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(theirs, decode_rows(raw, name, x.shape[1]))
    assert np.linalg.norm(theirs - x) / np.linalg.norm(x) < 0.2


def test_types_without_a_search_keep_the_reference_bytes():
    x = sample(4, 2, 1, "IQ4_XS", 1.0, "normal")
    raw = encode_rows(x, "IQ4_XS")
    kept = raw.copy()
    assert search_rows(x, "IQ4_XS", kept) is None
    np.testing.assert_array_equal(kept, raw)


def test_search_rows_checks_its_arguments():
    x = sample(5, 2, 1, "Q4_K", 1.0, "normal")
    raw = encode_rows(x, "Q4_K")
    with pytest.raises(ValueError, match="raw must have shape"):
        search_rows(x, "Q4_K", raw[:1].copy())
    with pytest.raises(ValueError, match="uint8"):
        search_rows(x, "Q4_K", raw.astype(np.int16))
    with pytest.raises(ValueError, match="float32"):
        search_rows(x.astype(np.float64), "Q4_K", raw)
    bad = x.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        search_rows(bad, "Q4_K", raw)
    with pytest.raises(ValueError, match="type_name"):
        search_rows(x, "Q9_K", raw)
