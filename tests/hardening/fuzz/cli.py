"""The command: ``nbwoq quantize`` with drawn options on a tiny generated checkpoint; it
must finish or exit with a usage error, never a traceback."""

import os
import tempfile

from hypothesis import strategies as st

import nbwoq
from nbwoq._tables import DTYPES

from .core import FuzzFailure
from .strategies import mostly


_cli_source = {}


def cli_source():
    """A tiny generated checkpoint (made once per process)."""
    if "path" not in _cli_source:
        from nbwoq.command.demo_model import write_checkpoint

        _cli_source["path"] = write_checkpoint(
            tempfile.mkdtemp(prefix="nbwoq-fuzz-cli-"), hidden_size=64, intermediate_size=96, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=64, shard_bytes=30_000)
    return _cli_source["path"]


@st.composite
def cli_cases(draw):
    """Command lines for ``nbwoq quantize`` (the output path is added by the checker)."""
    options = {
        "--bits": mostly(st.sampled_from(("2", "3", "4", "8", "16")), st.sampled_from(("0", "17", "-1", "x", "4.5"))),
        "--group-size": mostly(st.sampled_from(("-1", "1", "7", "32", "64", "128", "300")),
                               st.sampled_from(("0", "-2", "x"))),
        "--scheme": mostly(st.sampled_from(("sym", "asym")), st.just("SYM")),
        "--dtype": mostly(st.sampled_from(DTYPES), st.just("nf8")),
        "--clip": mostly(st.sampled_from(("none", "tensor", "group")), st.just("all")),
        "--format": mostly(st.sampled_from(("nbwoq", "nbwoq", "gptq", "gguf")), st.just("onnx")),
        "--include": st.sampled_from(("*.weight", "*q_proj*", "nothing*", "model.embed_tokens.weight")),
        "--exclude": st.sampled_from(("*down_proj*", "*")),
        "--threads": mostly(st.sampled_from(("1", "2")), st.sampled_from(("0", "999", "x"))),
        "--top": mostly(st.sampled_from(("0", "3")), st.just("-1")),
    }
    argv = ["quantize", cli_source()]
    for flag in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=5)):
        argv += [flag, draw(options[flag])]
    for flag in draw(st.lists(st.sampled_from(("--full-range", "--overwrite", "--resume")), unique=True, max_size=2)):
        argv.append(flag)
    return argv + ["--quiet"]


def check_cli(argv):
    """Exit 0 with a complete output, 1 with one ``nbwoq: error:`` line and no output, or
    argparse's exit 2 for bad usage; never a traceback."""
    import contextlib
    import io
    import shutil

    from nbwoq.command.cli import main

    folder = tempfile.mkdtemp(prefix="nbwoq-fuzz-cli-out-")
    fmt = argv[argv.index("--format") + 1] if "--format" in argv else "nbwoq"
    out = f"{folder}/out" + (".gguf" if fmt == "gguf" else "")
    err, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            try:
                code = main(argv[:2] + [out] + argv[2:])
            except SystemExit as exc:  # argparse: bad usage
                code = exc.code
        if code == 0:
            if not os.path.exists(out) or os.path.exists(out + ".partial"):
                raise FuzzFailure(f"exit 0 without a finished output: {argv}")
            if fmt == "nbwoq":
                nbwoq.dequantize(nbwoq.load(out))
            return "ok"
        if code == 1:
            lines = err.getvalue().strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("nbwoq: error: "):
                raise FuzzFailure(f"exit 1 without one error line: {argv}: {lines}")
            if os.path.exists(out):
                raise FuzzFailure(f"exit 1 but the output exists: {argv}")
            return "refused"
        if code == 2:
            return "usage"
        raise FuzzFailure(f"exit status {code!r}: {argv}\n{err.getvalue()[-1500:]}")
    except FuzzFailure:
        raise
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__}: {exc}: {argv}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
