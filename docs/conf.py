"""Sphinx configuration of the nbwoq documentation.

Build (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API pages are generated from the code (autosummary stubs in ``api/generated/``, not
committed); the performance page and plot are rendered from the committed
``perf/results.json`` by the local ``perfpage`` extension, so the build never runs a
benchmark.
"""

import doctest
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import nbwoq  # noqa: E402

project = "nbwoq"
author = "the nbwoq authors"
copyright = "2026, the nbwoq authors"  # noqa: A001 (Sphinx's name)
release = nbwoq.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "numpydoc",
    "perfpage",
    "apidocs",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "perf/_generated", "**/.ipynb_checkpoints"]
root_doc = "index"

# One page per public name, generated at build time from the code.
autosummary_generate = True
autosummary_generate_overwrite = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"

# numpydoc renders Parameters/Returns/...; class members are listed by our own class
# template (numpydoc's member tables would make a second, unlinked list).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Every ``>>>`` block of every page (the API pages' docstring Examples included) runs
# under ``sphinx -b doctest``; ELLIPSIS for timings and temporary paths.
doctest_test_doctest_blocks = "default"
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1
# No global setup: every page imports what its examples use, as a reader must.

html_theme = "alabaster"
html_title = f"nbwoq {release}"
html_static_path = ["_static"]
# Code blocks scroll instead of being clipped; plots fit the column (nbwoq.css).
html_css_files = ["nbwoq.css"]
html_theme_options = {
    "description": "Fast, honest weight-only quantization",
    "fixed_sidebar": True,
}
