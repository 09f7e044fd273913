"""Numba's settings: ``_threads`` sets Numba's environment before Numba is imported, and
``_config`` sits on ``_threads`` (one way)."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Records, at Numba's first import, the environment it reads and which module imports it.
PROBE = r"""
import importlib.abc, json, os, sys

seen = {}

class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" and not seen:
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            seen["importer"] = frame.f_globals.get("__name__") if frame is not None else None
            seen["priority"] = os.environ.get("NUMBA_THREADING_LAYER_PRIORITY")
        return None

sys.meta_path.insert(0, Probe())
import {module}
import numba
seen["config"] = list(numba.config.THREADING_LAYER_PRIORITY)
print(json.dumps(seen))
"""


def _run(module):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    out = subprocess.run([sys.executable, "-c", PROBE.replace("{module}", module)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["nbwoq", "nbwoq._config", "nbwoq._kernels_int", "nbwoq.clip"])
def test_numba_reads_the_threading_layer_at_its_own_import(module):
    seen = _run(module)
    assert seen["importer"] == "nbwoq._threads"
    assert seen["priority"] == "omp tbb workqueue"
    assert seen["config"] == ["omp", "tbb", "workqueue"]


def _nbwoq_imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_config_depends_on_threads_never_the_reverse():
    threads = _nbwoq_imports(ROOT / "nbwoq" / "_threads.py")
    config = _nbwoq_imports(ROOT / "nbwoq" / "_config.py")
    assert not any(name.startswith("nbwoq") for name in threads)
    assert "nbwoq._threads" in config
