"""API-page helpers: doc comments for the re-exported constants, public cross-references.

Constants such as ``nbwoq.NF4`` are plain lists and dicts re-exported by the package, so
autodoc would show ``list``'s own docstring for them. Their description is the ``#:``
doc comment where they are defined (``nbwoq/_tables.py``); a public constant without
one is a build warning (an error under ``-W``), so the page can never go silent.

Docstrings refer to helpers by their defining module (``nbwoq_torch._modules.get_module``);
those references resolve to the public page of the same object.
"""

import importlib
import pkgutil

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

logger = logging.getLogger(__name__)

PACKAGES = ("nbwoq", "nbwoq_torch")


def _home_comment(package, name, obj):
    """The ``#:`` comment of ``name`` in the private module of ``package`` that defines it."""
    pkg = importlib.import_module(package)
    candidates = [package + "._tables"] + [
        f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("_")
    ]
    if package != "nbwoq":
        candidates.append("nbwoq._tables")
    for modname in candidates:
        try:
            module = importlib.import_module(modname)
        except ImportError:
            continue
        if getattr(module, name, None) is not obj:
            continue
        docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        comment = docs.get(("", name))
        if comment:
            return [line for line in comment if line is not None]
    return None


def process_docstring(app, what, name, obj, options, lines):
    if what not in ("data", "attribute"):
        return
    package, _, attr = name.rpartition(".")
    if package not in PACKAGES:
        return
    own = (type(obj).__doc__ or "").strip().splitlines()
    if lines and [line.strip() for line in lines if line.strip()] != [line.strip() for line in own if line.strip()]:
        return  # a real docstring or doc comment already
    comment = _home_comment(package, attr, obj)
    if comment is None:
        logger.warning(f"{name}: no '#:' doc comment where it is defined; the page would show "
                       f"{type(obj).__name__}'s own docstring", type="apidocs")
        comment = []
    lines[:] = comment + [""]


def public_reference(app, env, node, contnode):
    """Resolve ``pkg._private.name`` to the documented ``pkg.name`` (same object)."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    parts = target.split(".")
    if len(parts) < 3 or parts[0] not in PACKAGES or not any(p.startswith("_") for p in parts[1:-1]):
        return None
    public = f"{parts[0]}.{parts[-1]}"
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], public,
                               node, contnode)


def setup(app):
    # Before numpydoc (priority 500), which reformats the lines it is given.
    app.connect("autodoc-process-docstring", process_docstring, priority=400)
    app.connect("missing-reference", public_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
