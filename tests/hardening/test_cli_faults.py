"""The CLI under faults: killed mid-run (SIGTERM, SIGKILL) and a full disk.

Nothing may look finished afterwards: ``OUT`` appears only by the final rename, shards
inside ``OUT.partial`` only by their own rename once complete, so a half-written file is
always named ``*.tmp`` (or is the ``.partial`` file of a GGUF run, whose finished shards
``OUT.partial.run.json`` records). ``--resume`` then
completes to files byte-identical to an uninterrupted run. A full disk is a size-capped
tmpfs where one can be mounted (root), and always a writer raising ``OSError(ENOSPC)``.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nbwoq.formats import safetensors_io as st
from nbwoq.command.demo_model import write_checkpoint
from nbwoq.command.cli import main
from nbwoq.command import run
from nbwoq.command.run import PARTIAL

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128)

# The CLI with every tensor slowed down, so a signal lands while shards remain.
SLOW_CLI = """
    import sys, time
    from nbwoq.formats import quantizer
    real = quantizer.clip_ratios

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    quantizer.clip_ratios = slow
    from nbwoq.command.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("sharded")), shard_bytes=40_000, **SHAPE)


@pytest.fixture(scope="module")
def uninterrupted(sharded, tmp_path_factory):
    """``{format: {file: bytes}}`` of uninterrupted runs."""
    root = tmp_path_factory.mktemp("clean")
    out = {}
    for fmt in ("nbwoq", "gguf"):
        dest = str(root / ("out.gguf" if fmt == "gguf" else "out"))
        assert main(["quantize", sharded, dest, "--format", fmt, "--quiet"]) == 0
        out[fmt] = _contents(dest)
    return out


def _contents(path):
    if os.path.isfile(path):
        return {os.path.basename(path): open(path, "rb").read()}
    return {f: open(os.path.join(path, f), "rb").read() for f in sorted(os.listdir(path))}


def _finished_shards(partial):
    """Shards a resumed run will keep: files of a partial folder with their stats, or the
    count recorded next to a partial GGUF file."""
    if os.path.isfile(partial + ".run.json"):
        try:
            with open(partial + ".run.json") as f:
                return list(range(json.load(f)["shards"]))
        except ValueError:  # being replaced right now
            return []
    return [f for f in os.listdir(partial) if f.endswith(".safetensors") and os.path.exists(
        os.path.join(partial, f + ".stats.json"))] if os.path.isdir(partial) else []


def _assert_nothing_looks_finished(out, fmt):
    """No ``OUT``; inside a partial folder every file not named ``*.tmp`` is complete."""
    assert not os.path.exists(out)
    partial = out + PARTIAL
    if fmt == "gguf" or not os.path.isdir(partial):
        return
    for f in os.listdir(partial):
        if f.endswith(".safetensors"):
            st.read_header(os.path.join(partial, f))  # complete: its header and data check out
            assert os.path.exists(os.path.join(partial, f + ".stats.json"))


@pytest.mark.parametrize("fmt, sig", [
    pytest.param("nbwoq", signal.SIGTERM, id="nbwoq-SIGTERM"),
    pytest.param("nbwoq", signal.SIGKILL, id="nbwoq-SIGKILL"),
    pytest.param("gguf", signal.SIGKILL, id="gguf-SIGKILL"),  # one file: finished shards' tensors kept
])
def test_killed_run_leaves_nothing_finished_and_resumes(sharded, uninterrupted, tmp_path, sig, fmt):
    out = str(tmp_path / ("out.gguf" if fmt == "gguf" else "out"))
    script = tmp_path / "slow_cli.py"
    script.write_text(textwrap.dedent(SLOW_CLI))
    proc = subprocess.Popen([sys.executable, str(script), "quantize", sharded, out, "--format", fmt, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = out + PARTIAL
    deadline = time.monotonic() + 120
    # kill once a shard is finished
    while time.monotonic() < deadline and proc.poll() is None:
        if _finished_shards(partial):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == -sig
    _assert_nothing_looks_finished(out, fmt)
    kept = len(_finished_shards(partial))

    report = str(tmp_path / "report.json")
    assert main(["quantize", sharded, out, "--format", fmt, "--quiet", "--resume", "--report", report]) == 0
    assert _contents(out) == uninterrupted[fmt]
    assert not os.path.exists(partial) and not os.path.exists(partial + ".run.json")
    assert kept >= 1
    assert json.load(open(report))["summary"]["resumed_shards"] >= kept


class _FullDisk:
    """``StreamWriter.write`` raising ENOSPC from its ``after``-th call on."""

    def __init__(self, monkeypatch, after):
        self.calls = 0
        real = st.StreamWriter.write

        def write(writer, name, array):
            self.calls += 1
            if self.calls >= after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), writer.path)
            return real(writer, name, array)

        monkeypatch.setattr(st.StreamWriter, "write", write)


@pytest.mark.parametrize("after", [1, 7, 30])
def test_enospc_writer_clear_error_no_corrupt_output(sharded, uninterrupted, tmp_path, monkeypatch, capsys, after):
    out = str(tmp_path / "out")
    with monkeypatch.context() as m:
        _FullDisk(m, after)
        assert main(["quantize", sharded, out, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbwoq: error: No space left on device"), err
    _assert_nothing_looks_finished(out, "nbwoq")
    # the torn shard was removed; with no shard finished, so was OUT.partial (nothing to resume)
    if os.path.exists(out + PARTIAL):
        assert not any(f.endswith(".tmp") for f in os.listdir(out + PARTIAL))
        assert any(f.endswith(".safetensors") for f in os.listdir(out + PARTIAL))
    # with space again, --resume keeps what was finished and completes identically
    assert main(["quantize", sharded, out, "--quiet", "--resume"]) == 0
    assert _contents(out) == uninterrupted["nbwoq"]


@pytest.mark.parametrize("after", [3, 30], ids=["before-any-shard", "after-some-shards"])
def test_enospc_gguf_writer(sharded, uninterrupted, tmp_path, monkeypatch, capsys, after):
    """A full disk: one error line and no OUT. Before any shard is finished nothing is
    left; after some, ``OUT.partial`` keeps them and --resume completes the GGUF file
    byte-identically without quantizing them again."""
    pytest.importorskip("gguf")
    from nbwoq.formats import quantizer

    out = str(tmp_path / "out.gguf")
    calls = []
    real = run._write_padded

    def write_tensor(*args):
        calls.append(1)
        if len(calls) >= after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out + PARTIAL)
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(run, "_write_padded", write_tensor)
        assert main(["quantize", sharded, out, "--format", "gguf", "--quiet"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not os.path.exists(out) and not os.path.exists(out + PARTIAL + ".header")
    kept = len(_finished_shards(out + PARTIAL))
    if after == 3:
        assert not os.path.exists(out + PARTIAL) and not os.path.exists(out + PARTIAL + ".run.json")
        return
    assert kept >= 1
    quantized = []
    real_quantize = quantizer.clip_ratios
    monkeypatch.setattr(quantizer, "clip_ratios", lambda *a, **k: quantized.append(a[3]) or real_quantize(*a, **k))
    assert main(["quantize", sharded, out, "--format", "gguf", "--quiet", "--resume"]) == 0
    assert _contents(out) == uninterrupted["gguf"]
    assert len(quantized) < 28  # the finished shards' tensors were kept in the file, not quantized again


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 160 KiB tmpfs (needs root and a kernel that allows the mount), else skip."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a size-capped tmpfs here; the ENOSPC writer tests cover this")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_full_tmpfs_clear_error_no_corrupt_output(sharded, small_tmpfs, capsys):
    out = str(small_tmpfs / "out")
    assert main(["quantize", sharded, out, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    _assert_nothing_looks_finished(out, "nbwoq")
