"""nbwoq's thread count beside torch's: one OpenMP pool, neither count changes the other,
the count holds in every Python thread, and concurrent calls give serial results.

Checks that depend on process start-up (the threading layer, the first launch) run in
a fresh interpreter with ``NUMBA_NUM_THREADS=4``, so they mean the same on any machine.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest
from numba import prange

torch = pytest.importorskip("torch")

import nbwoq  # noqa: E402
import nbwoq_torch  # noqa: E402
from nbwoq._threads import ParallelKernel  # noqa: E402


@pytest.fixture(autouse=True)
def restore_thread_counts():
    before = nbwoq.get_num_threads(), torch.get_num_threads()
    yield
    nbwoq.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def _fresh_python(script, tmp_path, **env):
    """Run ``script`` in a new interpreter (no inherited Numba layer choice); its last
    stdout line is JSON."""
    path = tmp_path / "probe.py"
    path.write_text(textwrap.dedent(script))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    environ.update(NUMBA_NUM_THREADS="4", **env)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=environ, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


POOL_PROBE = """
    import json, os
    import torch
    torch.get_num_threads()          # torch has settled its own count
    torch.set_num_threads(3)
    import nbwoq_torch, nbwoq, numba

    def n_threads():
        return len(os.listdir("/proc/self/task"))

    for _ in range(3):
        torch.randn(2**22).exp_()    # torch's pool: 3 threads
    after_torch = n_threads()
    w = torch.randn(512, 1024)
    nbwoq_torch.quant_tensor(w, group_size=128)   # nbwoq's first launch (4 threads)
    torch_after_launch = torch.get_num_threads()
    for _ in range(3):
        nbwoq_torch.quant_tensor(w, group_size=128)
        torch.randn(2**22).exp_()
    after_both = n_threads()
    nbwoq.set_num_threads(2)
    torch_after_nbwoq_set = torch.get_num_threads()
    torch.set_num_threads(1)
    nbwoq_after_torch_set = nbwoq.get_num_threads()
    print(json.dumps(dict(layer=numba.threading_layer(), after_torch=after_torch, after_both=after_both,
                          torch_after_launch=torch_after_launch, torch_after_nbwoq_set=torch_after_nbwoq_set,
                          nbwoq_after_torch_set=nbwoq_after_torch_set)))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_one_pool_with_torch_and_neither_count_changes_the_other(tmp_path):
    r = _fresh_python(POOL_PROBE, tmp_path)
    assert r["layer"] == "omp"  # Linux has GNU OpenMP: the layer torch uses
    # nbwoq's team of 4 reuses torch's 3 workers: one more thread at most. (A second
    # pool, as the workqueue layer makes, would add 4; see the next test.)
    assert r["after_both"] - r["after_torch"] <= 1, r
    assert r["torch_after_launch"] == 3, "Numba's first launch changed torch's thread count"
    assert r["torch_after_nbwoq_set"] == 3
    assert r["nbwoq_after_torch_set"] == 2


CONCURRENT = """
    import concurrent.futures
    import numpy as np, nbwoq
    ws = [np.random.default_rng(i).standard_normal((256, 512)).astype(np.float32) for i in range(8)]
    serial = [nbwoq.quant_tensor(w.copy(), group_size=64) for w in ws]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            together = list(pool.map(lambda w: nbwoq.quant_tensor(w.copy(), group_size=64), ws))
            assert all(np.array_equal(a, b) for a, b in zip(serial, together))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_under_the_workqueue_layer(tmp_path):
    """A user's own layer choice wins. The same probe then sees Numba's second pool of 4
    (so the bound asserted above is a real check), and concurrent calls, which make the
    workqueue layer abort the process, are run one at a time and stay correct."""
    r = _fresh_python(textwrap.dedent(POOL_PROBE) + textwrap.dedent(CONCURRENT), tmp_path,
                      NUMBA_THREADING_LAYER="workqueue")
    assert r["layer"] == "workqueue"
    assert r["after_both"] - r["after_torch"] >= 4, r


@ParallelKernel  # as njit_kernel makes them, without the on-disk cache (a test helper)
@numba.njit(parallel=True, nogil=True)
def _threads_seen(out):
    """out[0]: the calling thread's Numba count; out[1:]: the thread that ran each step."""
    out[0] = numba.get_num_threads()
    for i in prange(1, out.shape[0]):
        out[i] = numba.get_thread_id()


def _seen_from_new_thread():
    out = np.zeros(65, dtype=np.int64)
    worker = threading.Thread(target=_threads_seen, args=(out,))
    worker.start()
    worker.join()
    return out


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads to tell one from many")
def test_the_count_holds_in_every_python_thread(monkeypatch):
    monkeypatch.setattr(nbwoq._threads, "SERIAL_BELOW", 0)  # the probe array is small
    nbwoq.set_num_threads(1)
    out = _seen_from_new_thread()
    assert out[0] == 1 and set(out[1:].tolist()) == {0}
    nbwoq.set_num_threads(2)
    assert _seen_from_new_thread()[0] == 2
    assert nbwoq.get_num_threads() == 2


def test_get_num_threads_defaults_to_numba_config():
    assert 1 <= nbwoq.get_num_threads() <= numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize(
    "value,error",
    [(0, ValueError), (-1, ValueError), (10**6, ValueError), (True, TypeError), (2.0, TypeError), ("2", TypeError)],
    ids=["zero", "negative", "too-many", "bool", "float", "str"],
)
def test_set_num_threads_refuses_bad_counts(value, error):
    before = nbwoq.get_num_threads()
    with pytest.raises(error, match="n must"):
        nbwoq.set_num_threads(value)
    assert nbwoq.get_num_threads() == before


def test_results_do_not_depend_on_the_thread_count():
    w = torch.randn(300, 1000, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    results = []
    for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        nbwoq.set_num_threads(n)
        q, scale, zp = nbwoq_torch.quant_tensor(w.clone(), bits=4, group_size=128, return_int=True)
        ratio = nbwoq_torch.search_clip(torch.nn.Linear(1000, 300).requires_grad_(False).to(torch.bfloat16))
        results.append((q.view(torch.int16), scale, zp))
    for a, b in zip(results[0], results[-1]):
        assert torch.equal(a, b)
    del ratio


def test_concurrent_calls_from_python_threads_give_serial_results():
    """Eight weights of mixed dtypes quantized by four Python threads at once, while a
    fifth runs torch ops: every result equals the serial one, bit for bit."""
    g = torch.Generator().manual_seed(2)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    weights = [torch.randn(192, 640, generator=g).to(dtypes[i % 4]) for i in range(8)]

    def run(w):
        out = w.clone()
        q, scale, zp = nbwoq_torch.quant_tensor(out, bits=4, group_size=64, return_int=True)
        return q.view(torch.uint8).clone(), scale, zp

    serial = [run(w) for w in weights]
    stop = threading.Event()

    def torch_work():
        x = torch.randn(256, 256)
        while not stop.is_set():
            x = torch.tanh(x @ x.T / 256)

    busy = threading.Thread(target=torch_work)
    busy.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                together = list(pool.map(run, weights))
                for a, b in zip(serial, together):
                    assert all(torch.equal(x, y) for x, y in zip(a, b))
    finally:
        stop.set()
        busy.join()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads to tell one from many")
def test_small_calls_run_on_the_calling_thread_alone(monkeypatch):
    """Below SERIAL_BELOW elements the pool is not woken; the count is restored after."""
    nbwoq.set_num_threads(2)
    out = np.zeros(65, dtype=np.int64)
    _threads_seen(out)
    assert out[0] == 1 and set(out[1:].tolist()) == {0}
    assert numba.get_num_threads() == 2
    monkeypatch.setattr(nbwoq._threads, "SERIAL_BELOW", 65)
    _threads_seen(out)
    assert out[0] == 2
