"""Library edges from the hardening pass: overlapping NumPy weights, unbounded clip
grids, odd quantile dtypes, a corrupt JIT cache, FIFOs in a source folder."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import nbwoq


def _base():
    return np.random.default_rng(0).standard_normal(256).astype(np.float32)


@pytest.mark.parametrize("strides", [(0, 4), (16, 4), (4, 4)], ids=["zero-stride", "rows-overlap", "cols-overlap"])
@pytest.mark.parametrize("func", ["quant_tensor", "qdq_weight_asym", "quantize_4bit"])
def test_weight_whose_elements_overlap_is_refused_before_any_write(strides, func):
    base = _base()
    before = base.copy()
    w = as_strided(base, shape=(4, 32), strides=strides, writeable=True)
    kwargs = dict(quant_tensor=dict(bits=4, group_size=32), qdq_weight_asym=dict(bits=4),
                  quantize_4bit=dict(dtype="nf4"))[func]
    with pytest.raises(ValueError, match="overlap in memory"):
        getattr(nbwoq, func)(w, **kwargs)
    np.testing.assert_array_equal(base, before)


def test_empty_weight_with_zero_strides_is_not_an_overlap():
    w = as_strided(_base(), shape=(5, 0), strides=(0, 0), writeable=True)
    assert nbwoq.quant_tensor(w, bits=4, group_size=-1) is w


def test_non_overlapping_strided_weights_are_still_taken():
    base = _base()
    w = as_strided(base, shape=(4, 32), strides=(64 * 4, 4), writeable=True)  # every other 32: no overlap
    assert nbwoq.quant_tensor(w, bits=4, group_size=32) is w
    assert nbwoq.quant_tensor(base.reshape(8, 32)[:, ::2], bits=4, group_size=16) is not None


def test_overlap_rule_matches_numpy_on_random_layouts():
    from nbwoq._validate import overlapping

    rng = np.random.default_rng(1)
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(1, 5, 2))
        strides = tuple(int(v) * 4 for v in rng.integers(0, 6, 2))
        addresses = [i * strides[0] + j * strides[1] for i in range(shape[0]) for j in range(shape[1])]
        truly = len(set(addresses)) < len(addresses)
        if overlapping(shape, strides, 4) is False:
            assert not truly, (shape, strides)  # never lets an overlapping layout through


@pytest.mark.parametrize("grid", [10_001, 10**9, [0.9] * 10_001])
def test_clip_grid_is_bounded(grid):
    with pytest.raises(ValueError, match="10000"):
        nbwoq.search_clip(np.ones((2, 64), np.float32), grid=grid)


@pytest.mark.parametrize("dtype", [np.longdouble, np.complex64, np.int32])
def test_quantile_array_of_another_dtype_names_quantile(dtype):
    with pytest.raises(TypeError, match="quantile as an array must be float16, float32 or float64"):
        nbwoq.quant_tensor(np.ones((4, 64), np.float32), bits=4, group_size=32, quantile=np.ones((4, 2), dtype))


def test_corrupt_jit_cache_file_falls_back_to_compiling(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    code = textwrap.dedent("""
        import warnings, numpy as np, nbwoq
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = nbwoq.quant_tensor(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), bits=4, group_size=32)
        print(float(out.sum()), sum("cache file could not be read" in str(w.message) for w in caught))
    """)
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith((".nbi", ".nbc"))]
    assert files
    for path in files:
        with open(path, "wb") as f:
            f.write(b"garbage")
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    value, warned = second.stdout.split()
    assert value == first.stdout.split()[0] and int(warned) == 1
    third = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert third.stdout.split()[1] == "0"  # the cache was written afresh


def test_fifo_in_a_source_folder_never_blocks(tmp_path):
    from nbwoq.command.cli import main
    from nbwoq.command.demo_model import write_checkpoint

    src = write_checkpoint(str(tmp_path / "src"), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    os.mkfifo(os.path.join(src, "extra.safetensors"))
    os.mkfifo(os.path.join(src, "generation_config.json"))
    result = []
    runner = threading.Thread(target=lambda: result.append(main(["quantize", src, str(tmp_path / "out"), "--quiet"])),
                              daemon=True)
    runner.start()
    runner.join(120)
    assert result == [0], "the run blocked on a FIFO (or failed)"
    assert not os.path.exists(tmp_path / "out" / "generation_config.json")
