"""Crash-level check: the Numba kernels, driven through the public API with random
shapes, strides and arguments (``boundscheck_driver.py``), never index out of bounds.

Runs in a subprocess with ``NUMBA_BOUNDSCHECK=1``, where a stray index raises instead of
reading or writing memory it does not own. The subprocess has a JIT cache directory of
its own: Numba's cache index does not record the bounds-check flag, so sharing the
normal cache would hand bounds-checked code to ordinary runs (or the reverse). The
directory lives in pytest's cache when there is one, so reruns skip most compiles:
about 9 s warm, about 23 s cold on two busy cores. (The clip search kernel is compiled
every run: with bounds checks on, Numba refuses to cache it, "uses dynamic globals".)
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "boundscheck_driver.py")
EXAMPLES = os.environ.get("NBWOQ_BOUNDSCHECK_EXAMPLES", "10")


@pytest.fixture
def bounds_cache(request, tmp_path):
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return str(cache.mkdir("nbwoq-boundscheck-jit"))
    return str(tmp_path / "jit")


def _run(env_extra, *args, timeout=600):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, DRIVER, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_kernels_stay_in_bounds(bounds_cache):
    # NUMBA_OPT=0: LLVM's optimizations are what make compiles slow and bounds checks do
    # not depend on them (they are emitted before LLVM runs); the arrays here are tiny.
    proc = _run({"NUMBA_BOUNDSCHECK": "1", "NUMBA_OPT": "0", "NUMBA_CACHE_DIR": bounds_cache}, EXAMPLES)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "0 failures" in proc.stdout


def test_driver_refuses_to_pass_without_bounds_checks(tmp_path):
    """Without NUMBA_BOUNDSCHECK the driver says so and fails instead of passing; with it,
    its probe (an index one past a row inside a kernel) must raise before anything runs."""
    proc = _run({"NUMBA_BOUNDSCHECK": "0", "NUMBA_CACHE_DIR": str(tmp_path / "jit")}, "0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "bounds checking is not on" in proc.stdout
