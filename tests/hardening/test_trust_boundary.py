"""The command's trust boundary: hostile indexes, planted symlinks, concurrent runs,
tampered resume records, broken configs.

Each test builds the hostile input by hand and checks the promise: one ``nbwoq: error:``
line (exit 1) and nothing written, or a run that completes without writing anywhere
but OUT.
"""

import fcntl
import json
import os
import shutil

import numpy as np
import pytest

from nbwoq.command import run
from nbwoq.command.cli import main
from nbwoq.command.demo_model import write_checkpoint
from nbwoq.formats import safetensors_io as st

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("model")), **SHAPE)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("sharded")), shard_bytes=40_000, **SHAPE)


@pytest.fixture
def src(model, tmp_path):
    """A private copy of the model (tests edit it)."""
    dest = tmp_path / "src"
    shutil.copytree(model, dest)
    return str(dest)


def _one_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbwoq: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _tree(path):
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


# -- 1. paths stay inside OUT ------------------------------------------------------------
@pytest.mark.parametrize("shard", ["../escape.safetensors", "sub/../../escape.safetensors", "ABS"])
def test_index_naming_a_shard_outside_the_folder_is_refused(src, tmp_path, capsys, shard):
    """Today's hole: the index's shard name became an output path, so a run wrote (or
    replaced) a file outside OUT."""
    outside = tmp_path / "escape.safetensors"
    os.replace(os.path.join(src, "model.safetensors"), outside)  # the source bytes live there
    if shard == "ABS":
        shard = str(outside)
    os.makedirs(os.path.join(src, "sub"), exist_ok=True)
    tensors, _ = st.read_header(str(outside))
    with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {name: shard for name in tensors}}, f)
    before = outside.read_bytes()
    out = tmp_path / "out"
    assert main(["quantize", src, str(out), "--quiet"]) == 1
    _one_error(capsys, "not a plain file name")
    assert outside.read_bytes() == before
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert sorted(os.listdir(tmp_path)) == ["escape.safetensors", "src"]


@pytest.mark.parametrize("weight_map", [[1, 2], "x", {"a": 3}, None])
def test_index_with_a_malformed_weight_map_is_one_error(src, tmp_path, capsys, weight_map):
    with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    assert main(["quantize", src, str(tmp_path / "out"), "--quiet"]) == 1
    _one_error(capsys, "weight_map")


# -- 2. source and output compared by identity ----------------------------------------------
def test_out_spelled_through_a_symlinked_parent_never_replaces_the_source(src, tmp_path, capsys):
    alias = tmp_path / "alias"
    os.symlink(tmp_path, alias)
    before = _tree(src)
    assert main(["quantize", src, str(alias / "src"), "--overwrite", "--quiet"]) == 1
    _one_error(capsys, "would overwrite the source")
    assert _tree(src) == before


def test_out_that_is_a_symlink_to_the_source_is_refused(src, tmp_path, capsys):
    link = tmp_path / "out"
    os.symlink(src, link)
    before = _tree(src)
    assert main(["quantize", src, str(link), "--overwrite", "--quiet"]) == 1
    _one_error(capsys, "would overwrite the source")
    assert _tree(src) == before and os.path.islink(link)


def test_out_holding_the_source_is_refused(src, tmp_path, capsys):
    assert main(["quantize", src, str(tmp_path), "--overwrite", "--quiet"]) == 1
    _one_error(capsys, "would overwrite the source")
    assert os.path.isdir(src)


# -- 3. no symlink followed when writing ----------------------------------------------------
@pytest.mark.parametrize("planted", [".partial", ".partial.header", ".partial.run.json", ".lock"])
def test_planted_symlinks_beside_a_gguf_out_are_never_written_through(src, tmp_path, capsys, planted):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.gguf"
    os.symlink(victim, str(out) + planted)
    code = main(["quantize", src, str(out), "--format", "gguf", "--quiet"])
    assert victim.read_bytes() == b"precious"
    if planted == ".lock":  # the lock file is never opened through a link: one error line
        assert code == 1
        _one_error(capsys, "Too many levels of symbolic links")
    else:
        assert code == 0 and out.is_file()


def test_planted_symlink_partial_folder_is_refused_on_resume(src, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    os.symlink(elsewhere, str(out) + ".partial")
    assert main(["quantize", src, str(out), "--resume", "--quiet"]) == 1
    _one_error(capsys, "symlink")
    assert os.listdir(elsewhere) == []


def test_side_file_symlinks_leaving_the_source_are_not_copied(src, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    os.symlink(secret, os.path.join(src, "tokenizer.json"))
    os.makedirs(os.path.join(src, "1_Pooling"))
    with open(os.path.join(src, "1_Pooling", "config.json"), "w") as f:
        f.write("{}")
    os.mkfifo(os.path.join(src, "pipe"))  # never opened: a FIFO would block the run
    out = tmp_path / "out"
    assert main(["quantize", src, str(out)]) == 0
    assert "pointing outside the source" in capsys.readouterr().err
    assert not (out / "tokenizer.json").exists() and not (out / "pipe").exists()
    assert (out / "1_Pooling" / "config.json").read_text() == "{}"


def test_hugging_face_cache_symlinks_into_blobs_are_copied(model, tmp_path):
    root = tmp_path / "models--org--name"
    snapshot = root / "snapshots" / "abc123"
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for fname in os.listdir(model):
        blob = root / "blobs" / f"blob-{fname}"
        shutil.copyfile(os.path.join(model, fname), blob)
        os.symlink(os.path.join("..", "..", "blobs", blob.name), snapshot / fname)
    (root / "blobs" / "blob-tok").write_text('{"tok": 1}')
    os.symlink(os.path.join("..", "..", "blobs", "blob-tok"), snapshot / "tokenizer.json")
    out = tmp_path / "out"
    assert main(["quantize", str(snapshot), str(out), "--quiet"]) == 0
    assert (out / "tokenizer.json").read_text() == '{"tok": 1}' and not (out / "tokenizer.json").is_symlink()


# -- 4. one run per OUT ---------------------------------------------------------------------
def test_a_second_run_into_the_same_out_exits_with_one_error_line(src, tmp_path, capsys):
    out = tmp_path / "out"
    fd = os.open(str(out) + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running nbwoq holds
        assert main(["quantize", src, str(out), "--quiet"]) == 1
        _one_error(capsys, "another nbwoq run")
        assert not out.exists() and not os.path.exists(str(out) + ".partial")
    finally:
        os.close(fd)
    assert main(["quantize", src, str(out), "--quiet"]) == 0
    assert not os.path.exists(str(out) + ".lock")  # the lock goes with the run


# -- 6. one error line for broken configs and names ----------------------------------------------
@pytest.mark.parametrize("config", [[1, 2], {"model_type": "llama"},
                                    {"model_type": "llama", "num_attention_heads": 0, "hidden_size": 64,
                                     "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 128},
                                    {"model_type": "llama", "num_attention_heads": "4", "hidden_size": 64,
                                     "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 128},
                                    {"model_type": "llama", "num_attention_heads": 4, "hidden_size": 64,
                                     "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 10**12}])
def test_broken_configs_are_one_error_line(src, tmp_path, capsys, config):
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(config, f)
    assert main(["quantize", src, str(tmp_path / "out.gguf"), "--format", "gguf", "--quiet"]) == 1
    _one_error(capsys)
    assert not os.path.lexists(tmp_path / "out.gguf")


def test_deeply_nested_config_is_one_error_line(src, tmp_path, capsys):
    with open(os.path.join(src, "config.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    assert main(["quantize", src, str(tmp_path / "out"), "--quiet"]) == 1
    _one_error(capsys, "config.json")


def test_control_characters_in_tensor_names_never_reach_the_terminal(tmp_path, capsys):
    name = "layers.0.evil\x1b[2J\x07.weight"
    path = str(tmp_path / "m.safetensors")
    st.save_file(path, [(name, "F32", np.full((4, 64), np.nan, np.float32))])
    assert main(["quantize", path, str(tmp_path / "out"), "--quiet"]) == 1
    line = _one_error(capsys)
    assert "\x1b" not in line and "\x07" not in line and "\\x1b" in line


# -- 7. nothing fails after OUT is finished -------------------------------------------------------
def test_report_path_problems_are_found_before_anything_is_written(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", src, str(out), "--report", str(tmp_path / "missing" / "r.json"), "--quiet"]) == 1
    _one_error(capsys, "--report")
    assert not out.exists()
    assert main(["quantize", src, str(out), "--report", os.path.join(src, "r.json"), "--quiet"]) == 1
    _one_error(capsys, "inside the source")
    assert not out.exists() and not os.path.exists(os.path.join(src, "r.json"))


def test_report_is_written_before_out_appears(src, tmp_path, monkeypatch):
    seen = {}
    real = run._finish

    def finish(partial, out, overwrite):
        seen["report"] = os.path.exists(tmp_path / "r.json")
        return real(partial, out, overwrite)

    monkeypatch.setattr(run, "_finish", finish)
    assert main(["quantize", src, str(tmp_path / "out"), "--report", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert seen == {"report": True}


# -- 8. resume trusts nothing ------------------------------------------------------------------
def _interrupted(sharded, out, fmt, monkeypatch, after=2):
    """Run until ``after`` shards (folder) or writes (GGUF) are done, then fail."""
    calls = []
    if fmt == "gguf":
        real = run._write_padded

        def hook(*args):
            calls.append(1)
            if len(calls) > after * 6:
                raise OSError(28, "No space left on device")
            return real(*args)
        target = "_write_padded"
    else:
        real = run._ShardStream.write

        def hook(self, *args):
            calls.append(1)
            if len(calls) > after:
                raise OSError(28, "No space left on device")
            return real(self, *args)
        target = None
    with monkeypatch.context() as m:
        if target:
            m.setattr(run, target, hook)
        else:
            m.setattr(run._ShardStream, "write", hook)
        assert main(["quantize", sharded, out, "--format", fmt, "--quiet"]) == 1


def _tamper_gguf(partial, how):
    record_path = partial + ".run.json"
    with open(record_path) as f:
        record = json.load(f)
    if how == "flip-byte":
        with open(partial, "r+b") as f:
            f.seek(record["bytes"] - 3)
            b = f.read(1)
            f.seek(record["bytes"] - 3)
            f.write(bytes([b[0] ^ 0xFF]))
        return
    if how == "bytes-beyond":
        record["bytes"] = 10**15
    elif how == "rows-garbage":
        record["rows"] = [{"name": 1}]
    elif how == "negative":
        record["tensors"] = -5
    elif how == "not-object":
        record = [1, 2, 3]
    with open(record_path, "w") as f:
        json.dump(record, f)


@pytest.mark.parametrize("how", ["flip-byte", "bytes-beyond", "rows-garbage", "negative", "not-object"])
def test_tampered_gguf_record_starts_over(sharded, tmp_path, monkeypatch, capsys, how):
    clean = str(tmp_path / "clean.gguf")
    assert main(["quantize", sharded, clean, "--format", "gguf", "--quiet"]) == 0
    out = str(tmp_path / "out.gguf")
    _interrupted(sharded, out, "gguf", monkeypatch)
    capsys.readouterr()
    _tamper_gguf(out + ".partial", how)
    assert main(["quantize", sharded, out, "--format", "gguf", "--resume"]) == 0
    assert "starting it over" in capsys.readouterr().err
    assert open(out, "rb").read() == open(clean, "rb").read()


@pytest.mark.parametrize("how", ["flip-byte", "rows-garbage", "truncate"])
def test_tampered_folder_shard_is_written_again(sharded, tmp_path, monkeypatch, capsys, how):
    clean = str(tmp_path / "clean")
    assert main(["quantize", sharded, clean, "--quiet"]) == 0
    out = str(tmp_path / "out")
    _interrupted(sharded, out, "nbwoq", monkeypatch)
    partial = out + ".partial"
    shard = sorted(f for f in os.listdir(partial) if f.endswith(".safetensors"))[0]
    path = os.path.join(partial, shard)
    if how == "flip-byte":
        data = bytearray(open(path, "rb").read())
        data[-1] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif how == "truncate":
        os.truncate(path, os.path.getsize(path) - 1)
    else:
        with open(path + ".stats.json", "w") as f:
            json.dump({"rows": "nope", "crc": 1, "bytes": 2}, f)
    capsys.readouterr()
    assert main(["quantize", sharded, out, "--resume"]) == 0
    assert f"{shard} does not match its record" in capsys.readouterr().err
    assert _tree(out) == _tree(clean)
