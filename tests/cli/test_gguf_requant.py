"""GGUF -> GGUF from a block-quantized source: each tensor is re-encoded from its stored
blocks a row at a time (``ggml_blocks.requant_rows``), never decoded whole, and a copied
tensor is streamed file to file. The oracle for the bytes is the two-step form,
``encode_rows(decode_rows(...))`` (both held to the references in ``tests/formats``)."""

import os

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import ggml_blocks
from nbwoq.formats.source import Source

gguf = pytest.importorskip("gguf")


def _source(path, rng, inf_row=None):
    """A llama GGUF whose block tensors are Q4_1, Q8_0 and Q4_K (256-wide rows), with
    float norms; ``inf_row``: that row of blk.1.ffn_up.weight stores an Inf scale."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_tensor("token_embd.weight", rng.standard_normal((64, 256)).astype(np.float16))
    for i, name in enumerate(("Q4_1", "Q8_0")):
        qtype = gguf.GGMLQuantizationType[name]
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(256).astype(np.float32))
        for part, shape in (("ffn_up", (96, 256)), ("ffn_down", (256, 512)), ("attn_q", (256, 256))):
            values = rng.standard_normal(shape).astype(np.float32)
            raw = ggml_blocks.encode_rows(values, name if part != "attn_q" else "Q4_K")
            if inf_row is not None and i == 1 and part == "ffn_up":
                raw[inf_row, 34:36] = (0x00, 0x7C)  # the second block's d: +Inf
            w.add_tensor(f"blk.{i}.{part}.weight", raw,
                         raw_dtype=qtype if part != "attn_q" else gguf.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _rows(t):
    """A gguf-py tensor's stored bytes as rows: (rows, bytes per row), and its row width."""
    rows, cols = int(np.prod(t.shape[1:])), int(t.shape[0])
    return np.ascontiguousarray(np.asarray(t.data).view(np.uint8).reshape(rows, -1)), cols


def _two_step(src_tensor, target):
    """The oracle: the source's blocks decoded whole, then encoded as ``target``."""
    raw, cols = _rows(src_tensor)
    values = ggml_blocks.decode_rows(raw, src_tensor.tensor_type.name, cols)
    return ggml_blocks.encode_rows(values, target, return_error=True, iq4_nl_search=True)


@pytest.mark.parametrize("ftype", ["Q4_0", "Q5_1", "Q8_0", "Q4_K_M", "IQ4_NL"])
def test_block_source_is_requantized_from_its_blocks(tmp_path, monkeypatch, ftype):
    src = _source(tmp_path / "src.gguf", np.random.default_rng(0))
    out = str(tmp_path / "out.gguf")
    # with the reference encoder no tensor is decoded whole: the quantized ones go through
    # requant_rows, the others are copied (--method search starts from the whole tensor)
    monkeypatch.setattr(Source, "_gguf_decode", lambda *a, **k: pytest.fail("a tensor was decoded whole"))
    assert main(["quantize", src, out, "--type", ftype, "--method", "reference", "--quiet"]) == 0
    monkeypatch.undo()
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    requantized = 0
    for t in gguf.GGUFReader(out).tensors:
        s = source[t.name]
        if t.tensor_type == s.tensor_type:
            assert np.asarray(t.data).tobytes() == np.asarray(s.data).tobytes(), t.name
        elif s.tensor_type.name in ggml_blocks.SUPPORTED:
            requantized += 1
            np.testing.assert_array_equal(_rows(t)[0], _two_step(s, t.tensor_type.name)[0], err_msg=t.name)
    assert requantized >= 4


def test_requantized_report_errors_equal_the_two_step_form(tmp_path):
    import json

    src = _source(tmp_path / "src.gguf", np.random.default_rng(1))
    out, report = str(tmp_path / "out.gguf"), str(tmp_path / "r.json")
    assert main(["quantize", src, out, "--type", "Q4_K_M", "--method", "reference", "--quiet", "--report", report]) == 0
    rows = {r["name"]: r for r in json.load(open(report))["tensors"]}
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    checked = 0
    for t in gguf.GGUFReader(out).tensors:
        s = source[t.name]
        if rows[t.name]["rel_mse"] is None or s.tensor_type.name not in ggml_blocks.SUPPORTED:
            continue
        _, err, norm = _two_step(s, t.tensor_type.name)
        assert rows[t.name]["rel_mse"] == pytest.approx(err.sum() / norm.sum(), rel=1e-12), t.name
        checked += 1
    assert checked >= 4


def test_block_source_with_an_inf_scale_is_one_error_and_no_output(tmp_path, capsys):
    src = _source(tmp_path / "src.gguf", np.random.default_rng(2), inf_row=5)
    out = str(tmp_path / "out.gguf")
    assert main(["quantize", src, out, "--type", "Q4_0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "nbwoq: error: tensor 'blk.1.ffn_up.weight': weight has non-finite values (NaN or Inf), first in row 5" in err
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_copy_of_a_source_that_shrank_is_one_error(tmp_path, monkeypatch, capsys):
    """A copied tensor is read from the file; a file cut short meanwhile is an input error,
    not a crash on a mapped page."""
    src = _source(tmp_path / "src.gguf", np.random.default_rng(3))
    out = str(tmp_path / "out.gguf")
    opened = Source.__init__

    def cut_after_scan(self, path):
        opened(self, path)
        os.truncate(path, os.path.getsize(path) - 100)

    monkeypatch.setattr(Source, "__init__", cut_after_scan)
    # the last tensor (cut short) is copied: read from the file, not mapped
    assert main(["quantize", src, out, "--type", "Q4_0", "--quiet", "--exclude", "blk.1.attn_q.weight"]) == 1
    assert "changed while it was read" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_gguf_to_gguf_does_without_gguf_py(tmp_path):
    """A GGUF source's run reads and writes with our own tables and header writer."""
    import subprocess
    import sys

    src = _source(tmp_path / "src.gguf", np.random.default_rng(4))
    code = ("import sys; from nbwoq.command.cli import main; "
            f"assert main(['quantize', {src!r}, {str(tmp_path / 'out.gguf')!r}, '--type', 'Q4_K_M', '--quiet']) == 0; "
            "assert 'gguf' not in sys.modules, 'gguf imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q5_0"])
def test_method_search_from_a_block_source_searches(tmp_path, ftype):
    """``--method search`` starts from the reference's blocks of the decoded source: the
    searched tensors change, never to a higher weighted error, and the others are the
    reference's bytes (re-encoded from the blocks as without the search)."""
    import json

    src = _source(tmp_path / "src.gguf", np.random.default_rng(5))
    ref, ours, report = (str(tmp_path / n) for n in ("ref.gguf", "search.gguf", "r.json"))
    assert main(["quantize", src, ref, "--type", ftype, "--method", "reference", "--quiet"]) == 0
    assert main(["quantize", src, ours, "--type", ftype, "--method", "search", "--quiet", "--report", report]) == 0
    a = {t.name: t for t in gguf.GGUFReader(ref).tensors}
    rows = {r["name"]: r for r in json.load(open(report))["tensors"]}
    changed = 0
    for t in gguf.GGUFReader(ours).tensors:
        assert t.tensor_type == a[t.name].tensor_type, t.name
        same = np.array_equal(np.asarray(t.data), np.asarray(a[t.name].data))
        if ggml_blocks.searched(t.tensor_type.name) and rows[t.name]["rel_mse"] is not None:
            assert rows[t.name]["weighted_error"] <= rows[t.name]["reference_weighted_error"], t.name
            changed += not same
        else:
            assert same, t.name
    assert changed > 0
