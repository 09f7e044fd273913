"""The Examples of the public docstrings run, as ``doctest.testmod`` runs them.

Modules are imported inside the tests, so collecting this file imports neither torch
nor Numba; the torch face's modules are skipped where torch is not installed. Sphinx's
doctest build (``tests/test_docs.py``) runs the same Examples once more from the
rendered API pages, next to the user guide's.
"""

import doctest
import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _modules_with_examples():
    """Every module of the two packages whose source holds a ``>>>`` example, found by
    reading the files (collecting this file imports nothing)."""
    found = []
    for package in ("nbwoq", "nbwoq_torch"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if re.search(r"^\s*>>> ", path.read_text(), re.M):
                parts = path.relative_to(ROOT).with_suffix("").parts
                found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _modules_with_examples()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Public functions whose docstring has no Examples yet (shown by a neighbour's example).
NO_EXAMPLES_YET = {
    "nbwoq_torch.recover_forward": "undoes replace_forward; replace_forward's example calls it",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name.startswith("nbwoq_torch"):
        pytest.importorskip("torch")
    import nbwoq

    module = importlib.import_module(name)
    threads = nbwoq.get_num_threads()  # the _threads examples change and restore it
    try:
        result = doctest.testmod(module, optionflags=FLAGS, report=True)
    finally:
        nbwoq.set_num_threads(threads)
    assert result.attempted > 0, f"{name}: its '>>>' lines are not docstring examples doctest can find"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"


def test_the_scan_finds_the_public_modules():
    for name in ("nbwoq.quantize", "nbwoq.clip", "nbwoq.formats.nbwoq_io", "nbwoq_torch.quantize", "nbwoq_torch._modules"):
        assert name in MODULES


@pytest.mark.parametrize("package", ["nbwoq", "nbwoq_torch"])
def test_public_functions_have_numpydoc_examples(package):
    if package == "nbwoq_torch":
        pytest.importorskip("torch")
    module = importlib.import_module(package)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not inspect.isfunction(obj) or f"{package}.{name}" in NO_EXAMPLES_YET:
            continue
        doc = inspect.getdoc(obj) or ""
        # Returns is optional in numpydoc (set_num_threads returns nothing).
        if inspect.signature(obj).parameters and not re.search(r"^Parameters\n-+$", doc, re.M):
            missing.append(f"{name}: no Parameters section")
        if not re.search(r"^Examples\n-+$", doc, re.M):
            missing.append(f"{name}: no Examples section")
        if ">>> " not in doc.partition("Examples")[2]:
            missing.append(f"{name}: no example under Examples")
    assert not missing, missing
