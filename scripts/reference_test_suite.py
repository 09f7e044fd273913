"""Run the reference's own weight-only tests as installed and with nbwoq substituted.

Usage (needs ``pip install -e ".[clients]"`` and ``pytest-timeout``)::

    python scripts/reference_test_suite.py [--git-dir /work/.mirror/intel+neural-compressor/repo]
        [--rev HEAD] [--scratch /tmp/ref-tests] [--test-timeout 600] [--file-timeout 5400]
        [--files rtn awq ...] [-k EXPRESSION] [--absorb-backend torchscript] [--json results.json]

The reference's weight-only test files (RTN, AWQ, TEQ, GPTQ, utility, module and mixed
algorithms) are taken from a git checkout of neural-compressor at ``--rev`` (its
``neural_compressor/torch/algorithms/weight_only`` must match the installed package; the
script checks) into ``--scratch``, and each file runs twice, one pytest at a time: once
as installed ("reference"), once with ``nbwoq_torch.patch_reference()`` entered for the
whole session ("nbwoq"). A table gives passed/failed/skipped/timeout/error both ways and
the tests that pass on the reference but not on nbwoq. ``-k`` selects tests as pytest's
``-k`` does (both ways alike), so a slow file can be run in chunks.

The same file is also the pytest plugin of those runs (``-p reference_test_suite``). It
makes the tests runnable offline, identically both ways:

- the hub models the tests name are built from their configs with random weights (fixed
  seed) into a private hub cache (``HF_HOME``, ``HF_HUB_OFFLINE=1``), so
  ``from_pretrained`` and the reference's layer-wise loader find them; the tests'
  tolerances are then checked on these weights, not the hub's;
- GPTQ resolves its ``model_path`` through the hub even when it never loads from it, and
  the installed ``huggingface_hub`` rejects the default ``""``; the plugin leaves an empty
  path empty (only layer-wise loading reads it);
- transformers is imported before the reference, as the test files do (the reference's
  modules bind it only if it is already imported).

Tests that fail both ways but for different reasons are listed beside the regressions.

A test that runs past ``--test-timeout`` is stopped by pytest-timeout and counted as
"timeout"; a file that runs past ``--file-timeout`` is killed, its unfinished tests are
counted as "timeout" too (the one running) and "not run" (the rest). Each run's wall time
and peak memory (``/usr/bin/time``) are printed.
"""

import argparse
import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# label -> path in the reference's repository (neural-compressor 3.10's layout)
FILES = {
    "utility": "test/torch/algorithms/weight_only/test_woq_utility.py",
    "utils": "test/torch/quantization/weight_only/test_woq_utils.py",
    "module": "test/torch/algorithms/weight_only/test_woq_module.py",
    "mixed": "test/torch/quantization/weight_only/test_mixed_algos.py",
    "rtn": "test/torch/quantization/weight_only/test_rtn.py",
    "awq": "test/torch/quantization/weight_only/test_awq.py",
    "teq": "test/torch/quantization/weight_only/test_teq.py",
    "teq-quantizer": "test/torch/algorithms/weight_only/test_teq_quantizer.py",
    "gptq": "test/torch/quantization/weight_only/test_gptq.py",
}
MODES = ("reference", "nbwoq")
OUTCOMES = ("passed", "failed", "skipped", "timeout", "error")
_WEIGHT_ONLY = "neural_compressor/torch/algorithms/weight_only"


# ---------------------------------------------------------------- offline hub models


def _hub_models():
    """The hub models the tests load, as configs (their published values), and tokenizers."""
    import transformers

    return {
        "hf-internal-testing/tiny-random-GPTJForCausalLM": transformers.GPTJConfig(
            vocab_size=1000, n_positions=512, n_embd=32, n_layer=5, n_head=4, rotary_dim=4, n_inner=None,
            activation_function="gelu_new", bos_token_id=98, eos_token_id=98, pad_token_id=98,
            tie_word_embeddings=False),
        "trl-internal-testing/tiny-OPTForCausalLM": transformers.OPTConfig(
            vocab_size=50272, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, ffn_dim=4,
            word_embed_proj_dim=16, max_position_embeddings=100),
        "sshleifer/tiny-gpt2": transformers.GPT2Config(
            vocab_size=50257, n_positions=1024, n_embd=2, n_layer=2, n_head=2),
    }


def _byte_level_tokenizer_files(folder):
    """A GPT-2 byte-level BPE vocabulary of the 256 bytes and no merges (ids < 256)."""
    # GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the
    # others for the characters from U+0100 on, in byte order.
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)}
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    vocab = {char: i for i, char in enumerate(chars)}
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_hub_cache(cache):
    """Write the tests' hub models (random weights, seed 0) as a hub cache under ``cache``."""
    import torch
    import transformers

    commit = "0" * 40
    for repo_id, config in _hub_models().items():
        storage = pathlib.Path(cache) / ("models--" + repo_id.replace("/", "--"))
        snapshot = storage / "snapshots" / commit
        if (snapshot / "config.json").exists():
            continue
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        model.save_pretrained(snapshot)
        if repo_id == "sshleifer/tiny-gpt2":
            _byte_level_tokenizer_files(snapshot)
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / "main").write_text(commit)


# ---------------------------------------------------------------- the pytest plugin


_substitution = None
_log = None


def pytest_configure(config):
    global _substitution, _log
    if os.environ.get("NBWOQ_SUITE_LOG"):
        _log = open(os.environ["NBWOQ_SUITE_LOG"], "a", buffering=1)
    # The test files import transformers before the reference, and the reference's modules
    # bind it only if it is already imported (gptq.py's Conv1D check needs it).
    import transformers  # noqa: F401
    import neural_compressor.torch.quantization  # noqa: F401  (the algorithms, before substituting)
    from neural_compressor.torch.algorithms import layer_wise
    from neural_compressor.torch.algorithms.weight_only import gptq

    original = gptq.get_path
    gptq.get_path = lambda path: path if not path else original(path)
    layer_wise.get_path = gptq.get_path  # gptq's layer-wise set-up imports it from there
    if os.environ.get("NBWOQ_SUBSTITUTE") == "1":
        import nbwoq_torch

        _substitution = nbwoq_torch.patch_reference(absorb_backend=os.environ.get("NBWOQ_ABSORB_BACKEND",
                                                                                  "torchscript"))
        _substitution.__enter__()


def pytest_unconfigure(config):
    global _substitution
    if _substitution is not None:
        _substitution.__exit__(None, None, None)
        _substitution = None


def pytest_report_header(config):
    module = sys.modules["neural_compressor.torch.algorithms.weight_only.utility"]
    return (f"utility module: quant_tensor from {module.quant_tensor.__module__} (substituted: "
            f"{_substitution is not None}, absorb_backend {os.environ.get('NBWOQ_ABSORB_BACKEND', 'torchscript')})")


def pytest_runtest_logreport(report):
    # Written as each phase ends, so a run killed at the file limit keeps what it did.
    if _log is None or (report.when != "call" and report.outcome == "passed"):
        return
    outcome = report.outcome
    text = str(report.longrepr) if report.longrepr else ""
    if outcome == "failed":
        if "Timeout (>" in text or "Timeout >" in text:
            outcome = "timeout"
        elif report.when != "call":
            outcome = "error"
    line = next((t for t in text.splitlines() if t.startswith("E ")), text.splitlines()[-1] if text else "")
    _log.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": outcome,
                           "duration": round(report.duration, 2), "reason": line[:300]}) + "\n")


# ---------------------------------------------------------------- the runner


def _check_same_reference(git_dir, rev):
    """The checkout's weight-only algorithms must be the installed ones."""
    import neural_compressor.torch

    installed = pathlib.Path(neural_compressor.torch.__file__).parents[2]  # neural_compressor is a namespace
    names = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "--name-only", rev, _WEIGHT_ONLY + "/"],
                           check=True, capture_output=True, text=True).stdout.split()
    differ = []
    for name in names:
        if not name.endswith(".py"):
            continue
        text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{rev}:{name}"], check=True,
                              capture_output=True, text=True).stdout
        if (installed / name).read_text() != text:
            differ.append(name)
    return differ


def extract(git_dir, rev, scratch, labels):
    scratch = pathlib.Path(scratch)
    for label in labels:
        path = FILES[label]
        text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout
        target = scratch / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return scratch


def _select(args):
    return ["-k", args.k] if args.k else []


def _collect(test_file, env, args):
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "reference_test_suite", *_select(args), str(test_file)], env=env,
                         capture_output=True, text=True, cwd=env["NBWOQ_SUITE_CWD"])
    return [line for line in out.stdout.splitlines() if "::" in line]


def run_file(test_file, mode, args, hf_home):
    workdir = tempfile.mkdtemp(prefix=f"nbwoq_refsuite_{mode}_")  # the tests write ./saved_results etc.
    log = pathlib.Path(workdir) / "reports.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]),
               HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               NBWOQ_SUBSTITUTE="1" if mode == "nbwoq" else "0", NBWOQ_ABSORB_BACKEND=args.absorb_backend,
               NBWOQ_SUITE_LOG=str(log),
               NBWOQ_SUITE_CWD=workdir)
    nodes = _collect(test_file, env, args)
    stats = pathlib.Path(workdir) / "time.txt"
    command = ["/usr/bin/time", "-v", "-o", str(stats), "timeout", "--signal=KILL", str(args.file_timeout),
               sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "reference_test_suite",
               f"--timeout={args.test_timeout}", "-W", "ignore::DeprecationWarning", *_select(args), str(test_file)]
    start = time.perf_counter()
    with open(pathlib.Path(workdir) / "pytest.out", "w") as output:
        rc = subprocess.run(command, env=env, cwd=workdir, stdout=output, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    results = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        if entry["nodeid"] not in results or entry["outcome"] != "passed":
            results[entry["nodeid"]] = entry
    peak = None
    for line in stats.read_text().splitlines() if stats.exists() else []:
        if "Maximum resident set size" in line:
            peak = int(line.rsplit(":", 1)[1]) / 1024 / 1024  # GiB
    killed = rc in (137, -9) or wall >= args.file_timeout
    for node in nodes:
        node_id = node.split(" ")[0]
        if node_id not in results:
            results[node_id] = {"nodeid": node_id, "outcome": "not run",
                                "reason": "file killed (limit or memory)" if killed else "not reported"}
    if killed:  # the test running when the file was killed
        unfinished = [n for n in nodes if results[n]["outcome"] == "not run"]
        if unfinished:
            results[unfinished[0]].update(outcome="timeout", reason=f"file limit {args.file_timeout}s or killed")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"rc": rc, "wall": wall, "peak_gib": peak, "killed": killed, "results": results, "workdir": workdir}


def _reason(entry):
    """The error line without its indentation or the run's paths."""
    return " ".join(entry.get("reason", "").split()[1:])


def _counts(run):
    counter = collections.Counter(entry["outcome"] for entry in run["results"].values())
    return "/".join(str(counter.get(outcome, 0)) for outcome in OUTCOMES) + (
        f" +{counter['not run']} not run" if counter.get("not run") else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", default="/work/.mirror/intel+neural-compressor/repo")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--scratch", default=None, help="where the test files go (default: a new temp folder)")
    parser.add_argument("--hf-home", default=None, help="HF_HOME of the offline hub cache (default: in --scratch)")
    parser.add_argument("--test-timeout", type=int, default=600)
    parser.add_argument("--file-timeout", type=int, default=5400)
    parser.add_argument("--files", nargs="*", default=list(FILES), choices=list(FILES))
    parser.add_argument("-k", default=None, help="run only the tests pytest's -k EXPRESSION selects (both ways)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--absorb-backend", default="torchscript", choices=("torchscript", "auto", "export"),
                        help="patch_reference(absorb_backend=) of the nbwoq runs")
    parser.add_argument("--json", help="write every test's outcome here")
    parser.add_argument("--keep", action="store_true", help="keep each run's working folder (its pytest output)")
    args = parser.parse_args(argv)

    differ = _check_same_reference(args.git_dir, args.rev)
    if differ:
        sys.exit(f"{args.git_dir}@{args.rev} is not the installed reference: {differ}")
    scratch = extract(args.git_dir, args.rev, args.scratch or tempfile.mkdtemp(prefix="nbwoq_reftests_"), args.files)
    hf_home = pathlib.Path(args.hf_home or scratch / "hf")
    build_hub_cache(hf_home / "hub")
    import nbwoq_torch

    print(f"reference tests from {args.git_dir}@{args.rev} in {scratch}; nbwoq_torch from "
          f"{pathlib.Path(nbwoq_torch.__file__).parent}; limits {args.test_timeout}s a test, "
          f"{args.file_timeout}s a file; nbwoq with absorb_backend={args.absorb_backend!r}; {os.cpu_count()} CPUs",
          flush=True)
    runs = {}
    for label in args.files:
        for mode in args.modes:
            run = run_file(scratch / FILES[label], mode, args, hf_home)
            runs[(label, mode)] = run
            peak = f"{run['peak_gib']:.2f} GiB" if run["peak_gib"] is not None else "?"
            print(f"  {label:<14}{mode:<10} {_counts(run):<22} {run['wall']:7.0f}s  peak {peak}  rc {run['rc']}"
                  + (f"  (kept: {run['workdir']})" if args.keep else ""), flush=True)

    print(f"\n{'file':<14}| {'reference p/f/s/t/e':<24}| {'nbwoq p/f/s/t/e':<24}| passes on the reference only"
          " (and fails both ways, for different reasons)")
    for label in args.files:
        line = f"{label:<14}"
        for mode in MODES:
            line += f"| {_counts(runs[(label, mode)]) if (label, mode) in runs else '-':<24}"
        regressions = []
        if all((label, mode) in runs for mode in MODES):
            ours = runs[(label, "nbwoq")]["results"]
            for node, entry in runs[(label, "reference")]["results"].items():
                theirs = ours.get(node, {})
                if entry["outcome"] == "passed" and theirs.get("outcome") != "passed":
                    regressions.append(f"{node} ({theirs.get('outcome')}: {theirs.get('reason', '')[:120]})")
                elif entry["outcome"] not in ("passed", "skipped") and theirs.get("outcome") == entry["outcome"] \
                        and _reason(theirs) != _reason(entry):
                    regressions.append(f"({node}: {_reason(theirs)[:120]!r} here, {_reason(entry)[:120]!r} there)")
        print(line + "| " + ("; ".join(regressions) or "none"))
    for label in args.files:
        for mode in args.modes:
            for node, entry in runs[(label, mode)]["results"].items():
                if entry["outcome"] not in ("passed", "skipped"):
                    print(f"  [{mode}] {node}: {entry['outcome']}: {entry.get('reason', '')[:200]}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {f"{label}:{mode}": {k: v for k, v in run.items() if k != "workdir"} for (label, mode), run in runs.items()},
            indent=1))


if __name__ == "__main__":
    main()
