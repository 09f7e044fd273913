"""The layers point one way: core <- file formats <- command, and core <- torch face.

A static scan of every module-level import in ``nbwoq/`` and ``nbwoq_torch/``: no
module imports a layer above its own, none imports its own package back (a package's
``__init__`` re-exports; its modules import the modules they need), and the import graph
has no cycle.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("nbwoq", "nbwoq_torch")


def _modules():
    """``{dotted name: path}`` of every module of the two packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for fname in files:
                if fname.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, fname), ROOT)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    found[".".join(rel)] = os.path.join(folder, fname)
    return found


MODULES = _modules()


def _is_package(name):
    return MODULES[name].endswith("__init__.py")


def _module_level_imports(path):
    """Imports executed when the module is imported (not those inside functions)."""
    tree = ast.parse(open(path).read(), path)
    nodes = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                nodes.append(node)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [])
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
    visit(tree.body)
    return nodes


def _edges(name):
    """Project modules ``name`` imports at module level, and whether it imports a
    package's ``__init__`` for a name defined there (not a submodule)."""
    targets = []
    for node in _module_level_imports(MODULES[name]):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES]
            continue
        base = node.module or ""
        if node.level:
            parts = name.split(".") if _is_package(name) else name.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        if base.split(".")[0] not in PACKAGES:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append(sub if sub in MODULES else base)
    return targets


GRAPH = {name: _edges(name) for name in MODULES}


def _layer(name):
    if name.startswith("nbwoq_torch"):
        return "torch"
    if name.startswith("nbwoq.command") or name == "nbwoq.__main__":
        return "command"
    if name.startswith("nbwoq.formats"):
        return "formats"
    return "core"


#: What each layer may import from the project.
ALLOWED = {
    "core": {"core"},
    "formats": {"core", "formats"},
    "command": {"core", "formats", "command"},
    "torch": {"core", "torch"},
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    layer = _layer(name)
    if name == "nbwoq":  # the package re-exports load/dequantize/save from the formats layer
        allowed = {"core", "formats"}
    else:
        allowed = ALLOWED[layer]
    bad = [t for t in GRAPH[name] if _layer(t) not in allowed]
    assert not bad, f"{name} ({layer}) imports {bad}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n not in PACKAGES))
def test_no_module_imports_its_package_back(name):
    own = [t for t in GRAPH[name] if t in PACKAGES or (t in MODULES and _is_package(t) and name.startswith(t + "."))]
    assert not own, f"{name} imports its own package {own} (import the module it needs instead)"


def test_import_graph_has_no_cycle():
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in GRAPH.get(node, ()):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_scan_sees_imports():
    """The scan is not vacuous: it finds the edges that are known to exist."""
    assert "nbwoq._validate" in GRAPH["nbwoq.quantize"]
    assert "nbwoq.formats.writer" in GRAPH["nbwoq.command.run"]


def test_import_nbwoq_loads_no_command_modules():
    code = ("import sys, nbwoq; bad = {'argparse', 'tqdm', 'gguf', 'torch'} & set(sys.modules); "
            "assert not bad, bad; assert not [m for m in sys.modules if m.startswith('nbwoq.command')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_plain_test_run_prints_no_report_block(monkeypatch):
    """The half-rounding statistics are information: shown under ``-v`` only."""
    import importlib.util

    import half_report

    spec = importlib.util.spec_from_file_location("tests_root_conftest", os.path.join(ROOT, "tests", "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class Reporter:
        def __init__(self, verbose):
            self.config = type("C", (), {"option": type("O", (), {"verbose": verbose})()})()
            self.lines = []

        def section(self, *args, **kwargs):
            self.lines.append(args[0])

        def write_line(self, line):
            self.lines.append(line)

    monkeypatch.setitem(half_report.HALF_DIFFERENCES, "bf16-int4", (1, 10))
    quiet, verbose = Reporter(0), Reporter(1)
    conftest.pytest_terminal_summary(quiet)
    conftest.pytest_terminal_summary(verbose)
    assert quiet.lines == [] and any("bf16-int4" in line for line in verbose.lines)


def test_the_suite_writes_its_temporary_files_in_its_own_folder(tmp_path):
    """The session's temporary folder (removed at the end): tempfile, tmp_path and
    subprocesses all write there, so a run leaves nothing in /tmp."""
    import tempfile

    session = os.environ["TMPDIR"]
    assert os.path.basename(session).startswith("nbwoq-tests-")
    assert tempfile.gettempdir() == session and str(tmp_path).startswith(session)
    out = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == session
