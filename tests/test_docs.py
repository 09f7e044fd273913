"""The documentation: it builds without a warning, its examples run, it names every API name.

The Sphinx builds run in subprocesses on a copy of ``docs/`` in a temporary folder (the
build writes generated pages next to its sources): the html build and the doctest
build (every ``>>>`` example of every page, the API pages' docstring Examples
included), both with ``-W``. The console examples (``$ nbwoq ...``) run here, in one
process, and their shown output must match (``...`` matches anything).
"""

import doctest
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

# Found, not imported: collecting this file stays cheap (the builds run in subprocesses).
_MISSING = [m for m in ("sphinx", "numpydoc", "matplotlib") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"the docs build needs {_MISSING} (pip install -e '.[test]')")

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SEED = ROOT / "tests" / "torch" / "seed_utility_api.rst"
IGNORED = shutil.ignore_patterns("_build", "generated", "_generated", "__pycache__")

# Offline and quiet: no hub look-ups, no progress bars in doctest output.
ENV = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")


def _copy_docs(dest):
    shutil.copytree(DOCS, dest, ignore=IGNORED)
    return dest


def _sphinx(builder, src, out):
    return subprocess.Popen(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, str(src), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=str(src))


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Both builds, started together (two cores: they overlap), each on its own copy."""
    base = tmp_path_factory.mktemp("docs")
    html_src, doctest_src = _copy_docs(base / "src-html"), _copy_docs(base / "src-doctest")
    procs = {"html": _sphinx("html", html_src, base / "html"),
             "doctest": _sphinx("doctest", doctest_src, base / "doctest")}
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        results[name] = (proc.returncode, out)
    results["html_dir"] = base / "html"
    results["doctest_dir"] = base / "doctest"
    return results


def test_html_builds_without_warnings(builds):
    code, out = builds["html"]
    assert code == 0, f"sphinx -W -b html failed:\n{out[-6000:]}"


def test_doctest_build_passes(builds):
    code, out = builds["doctest"]
    report = (builds["doctest_dir"] / "output.txt").read_text() if (builds["doctest_dir"] / "output.txt").exists() \
        else ""
    assert code == 0, f"sphinx -W -b doctest failed:\n{out[-6000:]}\n{report[-6000:]}"
    summary = re.search(r"(\d+) tests\s+(\d+) failures in tests", report)
    assert summary, report[-2000:]
    tests, failures = map(int, summary.groups())
    assert failures == 0 and tests >= 100, f"{tests} doctests, {failures} failures"


# --- every name of the reference, and of our packages, has its page ------------------------


def _seed_names():
    text = SEED.read_text()
    return re.findall(r"^   neural_compressor\.torch\.algorithms\.weight_only\.utility\.(\w+)$", text, re.M)


def _autosummary_names(page):
    names = []
    for block in re.findall(r"\.\. autosummary::\n((?:   .*\n|\n)+)", (DOCS / page).read_text()):
        names += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(":")]
    return names


def test_seed_copy_has_every_name():
    names = _seed_names()
    assert len(names) == 29 and "GraphTrace" in names and "INT_MAPPING" in names


def test_torch_page_mirrors_the_seed_in_order():
    seed = _seed_names()
    listed = _autosummary_names("api/nbwoq_torch.rst")
    assert listed[: len(seed)] == seed, "api/nbwoq_torch.rst must list the seed's names first, in its order"


def test_core_page_lists_the_seed_tensor_names_in_order():
    import nbwoq

    seed = [n for n in _seed_names() if n in nbwoq.__all__]
    listed = _autosummary_names("api/nbwoq.rst")
    assert listed[: len(seed)] == seed


@pytest.mark.parametrize("package", ["nbwoq", "nbwoq_torch"])
def test_every_public_name_has_a_page(package, builds):
    module = pytest.importorskip(package)
    listed = set(_autosummary_names(f"api/{package}.rst"))
    assert set(module.__all__) <= listed, f"not in api/{package}.rst: {sorted(set(module.__all__) - listed)}"
    assert listed <= set(module.__all__), f"not public: {sorted(listed - set(module.__all__))}"
    missing = [n for n in module.__all__ if not (builds["html_dir"] / "api" / "generated" / f"{package}.{n}.html").exists()]
    assert not missing, f"no generated page for {missing}"


def test_name_table_covers_every_seed_name():
    index = (DOCS / "api" / "index.rst").read_text()
    migrating = (DOCS / "guide" / "migrating.rst").read_text()
    for name in _seed_names():
        assert f"``{name}``" in index, f"api/index.rst: {name} missing from the name table"
        assert f"``{name}``" in migrating, f"guide/migrating.rst: {name} missing from the name table"


def test_constants_pages_show_their_own_description(builds):
    page = (builds["html_dir"] / "api" / "generated" / "nbwoq_torch.NF4.html").read_text()
    assert "16 levels of NF4" in page and "Built-in mutable sequence" not in page


# --- the pages and the README agree, the performance page shows the committed run ---------


def test_quickstart_has_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    quickstart = (DOCS / "guide" / "quickstart.rst").read_text()
    commands = re.findall(r"^(python -m pip install .*)$", readme, re.M)
    assert len(commands) >= 2
    for command in commands[:2]:
        assert f"$ {command}" in quickstart, f"quickstart.rst lacks the README's command {command!r}"


def test_readme_has_the_docs_build_command():
    assert "python -m sphinx -W --keep-going -b html docs docs/_build/html" in (ROOT / "README.md").read_text()


def test_performance_page_renders_the_committed_results(builds):
    data = json.loads((DOCS / "perf" / "results.json").read_text())
    assert data["speed"] and data["clip_error"] and data["machine"]["cpu"]
    html = (builds["html_dir"] / "performance.html").read_text()
    assert "time_vs_size.png" in html and (builds["html_dir"] / "_images" / "time_vs_size.png").exists()
    html = re.sub(r"<[^>]+>", "", html)  # the text, as a reader sees it
    for row in data["speed"]:
        assert row["function"] in html
        assert f"{row['speedup_vs_torch']:.1f}x" in html, row
        assert f"{row['ratio_to_floor']:.2f}x" in html, row
    assert data["machine"]["commit"] in html


def test_plot_links_to_full_size_and_code_scrolls(builds):
    html_dir = builds["html_dir"]
    html = (html_dir / "performance.html").read_text()
    assert re.search(r'<a [^>]*href="_images/time_vs_size.png"[^>]*>\s*<img', html), "the plot links to its full size"
    css = (html_dir / "_static" / "nbwoq.css").read_text()
    assert "overflow-x: auto" in css and 'nbwoq.css' in (html_dir / "guide" / "cli.html").read_text()


# --- console examples ----------------------------------------------------------------------

# Commands shown in the pages that this test does not run, and why.
NOT_RUN = {
    "python -m pip install": "installs; CI itself runs the README's install command",
    "python -m pytest": "this is the test suite",
    "python -m sphinx": "run by the builds above",
    "flock /tmp/nbwoq-bench.lock python docs/perf/measure.py": "a benchmark (minutes); never in the test suite",
    "cd asv_bench": "the folder of the asv command",
    "asv run": "the benchmark suite (many minutes); never in the test suite",
    "PYTHONPATH=$PWD python scripts/datafree_methods.py": "a measurement (SmolLM2 perplexities: long); never in the "
                                                          "test suite",
    "PYTHONPATH=$PWD python scripts/datafree_rotation.py": "a measurement (SmolLM2 perplexities: minutes); never in "
                                                           "the test suite",
    "nbwoq eval": "needs torch and a real model with a tokenizer (SmolLM2); tests/torch/test_eval.py runs it",
    "nbwoq quantize path/to/model": "placeholder paths showing a command's shape; tests/cli/test_gguf_types.py runs it",
    "nbwoq quantize model-f16.gguf": "placeholder paths showing a command's shape; tests/cli/test_gguf_types.py runs it",
}


def console_examples():
    """``(page, command, expected output)`` for every ``$`` line of every console block."""
    examples = []
    for page in sorted(DOCS.rglob("*.rst")):
        if "_build" in page.parts or "generated" in page.parts:
            continue
        text = page.read_text()
        for block in re.findall(r"\.\. code-block:: console\n\n((?:   .*\n|\n)+)", text):
            lines = textwrap.dedent(block).rstrip("\n").splitlines()
            current = None
            for line in lines:
                if line.startswith("$ "):
                    current = [line[2:].strip(), []]
                    examples.append((page.relative_to(DOCS).as_posix(), current))
                elif current is not None and not line.startswith("#"):
                    current[1].append(line)
                elif line.startswith("#"):
                    current = None
    return [(page, cmd, "\n".join(out).strip("\n")) for page, (cmd, out) in examples]


def _runnable(command):
    """The parts of ``command`` (split at ``&&``) this test runs as ``nbwoq`` argument lists."""
    runs = []
    for part in (p.strip() for p in command.split("&&")):
        words = shlex.split(part)
        if any(part.startswith(prefix) for prefix in NOT_RUN):
            continue
        if words[0] == "nbwoq":
            runs.append(words[1:])
        elif words[:3] == ["python", "-m", "nbwoq"]:
            runs.append(words[3:])
        elif not any(part.startswith(prefix) for prefix in NOT_RUN):
            raise AssertionError(f"console example {part!r} is neither run by this test nor listed in NOT_RUN")
    return runs


_RUNNER = """
import contextlib, io, json, sys
from nbwoq.command.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    results.append([code, out.getvalue()])
print(json.dumps(results))
"""


def test_console_examples_run_and_match(tmp_path):
    examples = console_examples()
    assert any(cmd.startswith("nbwoq quantize") for _, cmd, _ in examples)
    plan = []  # (page, command, argv, expected output or None when the command's part is not the last)
    for page, command, expected in examples:
        runs = _runnable(command)
        for k, argv in enumerate(runs):
            plan.append((page, command, argv, expected if k == len(runs) - 1 else None))
    # One process for all: the pages' commands build on each other (generate, then quantize).
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps([argv for _, _, argv, _ in plan])],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for (page, command, argv, expected), (code, output) in zip(plan, results):
        assert code == 0, f"{page}: `{command}` exited {code}:\n{output}"
        if expected:
            want = expected + "\n"
            assert checker.check_output(want, output, flags), f"{page}: `{command}` printed\n{output}\nexpected\n{want}"
