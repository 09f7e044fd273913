"""Many Python threads, and a pool of spawned processes, quantizing different and the
same read-only source arrays at once give results identical to serial runs, with torch
loaded (so Numba shares torch's OpenMP runtime, the layer ``nbwoq/_threads.py`` chooses
and documents).

Each job copies a shared read-only source into its own buffer (the in-place functions
then write only there) or reads the source itself (``search_clip``), so every thread
reads the same memory while others write elsewhere.
"""

import concurrent.futures
import multiprocessing
import os
import threading

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nbwoq  # noqa: E402
import nbwoq_torch  # noqa: E402

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = np.dtype(np.float16)


def sources():
    """Read-only source weights shared by every job; each above the size below which
    kernels run on the calling thread (``NBWOQ_SERIAL_BELOW``), so calls meet in the pool."""
    rng = np.random.default_rng(2024)
    out = {
        "f32": rng.standard_normal((256, 384)).astype(np.float32),
        "f64-tail": rng.standard_normal((131, 600)),
        "bf16": rng.standard_normal((192, 512)).astype(np.float32).astype(BF16),
        "f16-wide": (rng.standard_normal((16, 5000)) * 3).astype(np.float16),
    }
    for a in out.values():
        a.setflags(write=False)
    return out


# (name, source, function of a source array returning NumPy results): the core's
# functions, the torch face and the read-only search, with codebooks, groups with a
# tail, double quantization and given scales.
JOBS = [
    ("int4-asym-g128", "f32", lambda w: nbwoq.quant_tensor(w.copy(), bits=4, group_size=128)),
    ("int3-sym-full-codes", "f64-tail", lambda w: nbwoq.quant_tensor(w.copy(), bits=3, group_size=64, scheme="sym",
                                                                     full_range=True, return_int=True)),
    ("nf4-g32-codes", "bf16", lambda w: nbwoq.quant_tensor(w.copy(), group_size=32, dtype="nf4", return_int=True)),
    ("fp4-rowwise", "f16-wide", lambda w: nbwoq.quantize_4bit(w.copy(), dtype="fp4")),
    ("double-quant", "f32", lambda w: nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, double_quant=True,
                                                         double_quant_group_size=16)),
    ("asym-rows", "bf16", lambda w: nbwoq.qdq_weight_asym(w.copy(), bits=8, return_int=True)),
    ("w-scale", "f32", lambda w: nbwoq.quant_weight_w_scale(
        w.copy(), np.full((w.shape[0], 3), 0.05, np.float32), None, group_size=128, bits=8)),
    ("clip-tensor", "f32", lambda w: nbwoq.search_clip(w, bits=4, group_size=32)),
    ("clip-groups-nf4", "bf16", lambda w: nbwoq.search_clip(w, group_size=64, dtype="nf4", per_group=True)),
    ("torch-int4", "f64-tail", lambda w: nbwoq_torch.quant_tensor(torch.from_numpy(w.copy()), bits=4,
                                                                  group_size=32).numpy()),
    ("torch-transposed", "f32", lambda w: nbwoq_torch.quant_tensor(torch.from_numpy(w.T.copy()).t(), bits=2,
                                                                   group_size=16, scheme="sym").numpy()),
]


def _as_numpy(result):
    if isinstance(result, tuple):
        return tuple(_as_numpy(r) for r in result)
    if result is None or isinstance(result, float):
        return result
    a = np.asarray(result)
    return a.astype(np.float64) if a.dtype in (BF16, np.float16) else a


def run_job(index):
    name, src, func = JOBS[index % len(JOBS)]
    return name, _as_numpy(func(sources()[src] if index >= 0 else None))


def _equal(a, b):
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if a is None or isinstance(a, float):
        return a == b
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.fixture(scope="module")
def shared():
    return sources()


@pytest.fixture(scope="module")
def serial(shared):
    """Every job's result, run one after another in this thread."""
    return {name: _as_numpy(func(shared[src])) for name, src, func in JOBS}


def test_jobs_are_big_enough_for_the_pool(shared):
    from nbwoq import _threads

    assert min(a.size for a in shared.values()) >= _threads.SERIAL_BELOW


def test_threading_layer_with_torch_loaded():
    # nbwoq/_threads.py: OpenMP first, so nbwoq's kernels and torch's ops share one
    # libgomp pool (unless the user chose a layer; CI does not).
    if "NUMBA_THREADING_LAYER" in os.environ:
        pytest.skip("the user chose a threading layer")
    nbwoq.quant_tensor(np.ones((2, 8), np.float32))
    assert numba.threading_layer() == "omp"


@pytest.mark.parametrize("threads", [4, 16])
def test_threads_same_and_different_sources_match_serial(shared, serial, threads):
    rounds = int(os.environ.get("NBWOQ_CONCURRENCY_ROUNDS", "6"))
    jobs = [(k * 7 + t) % len(JOBS) for k in range(rounds) for t in range(threads)]
    barrier = threading.Barrier(threads)
    results = [None] * len(jobs)

    def worker(t):
        for slot in range(t, len(jobs), threads):
            if slot < threads:
                barrier.wait()  # every thread starts its first job together
            name, src, func = JOBS[jobs[slot]]
            results[slot] = (name, _as_numpy(func(shared[src])))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    for name, got in results:
        assert _equal(got, serial[name]), name
    for a in shared.values():  # nobody wrote to the shared sources
        assert not a.flags.writeable


def test_spawned_process_pool_matches_serial(serial):
    # spawn (or forkserver), never fork after a kernel ran: GNU OpenMP is not fork-safe
    # (nbwoq/_threads.py).
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        results = list(pool.map(run_job, range(len(JOBS))))
    for name, got in results:
        assert _equal(got, serial[name]), name
