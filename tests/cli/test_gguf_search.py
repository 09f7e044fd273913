"""``--type ... --method search``: a valid GGUF in llama.cpp's layout, the same tensor types
as the reference, and per tensor a weighted error no higher than the reference's,
reported. The oracles are gguf-py (it reads the file and dequantizes every tensor) and
``ggml_blocks``' reference encoder run on the source values."""

import json

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import ggml_blocks

from cli_helpers import read_tensor

gguf = pytest.importorskip("gguf")

SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from nbwoq.command.demo_model import write_checkpoint

    return write_checkpoint(str(tmp_path_factory.mktemp("s")), **SHAPE)


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q5_0"])
def test_search_writes_a_valid_file_with_lower_weighted_error(model, tmp_path, ftype):
    ref, ours = str(tmp_path / "ref.gguf"), str(tmp_path / "search.gguf")
    report = str(tmp_path / "report.json")
    assert main(["quantize", model, ref, "--type", ftype, "--method", "reference", "--quiet"]) == 0
    assert main(["quantize", model, ours, "--type", ftype, "--method", "search", "--quiet", "--report", report]) == 0
    a, b = _tensors(ref), _tensors(ours)
    assert list(a) == list(b)
    changed = 0
    for name, t in b.items():
        assert t.tensor_type == a[name].tensor_type and list(t.shape) == list(a[name].shape), name
        values = gguf.quants.dequantize(t.data, t.tensor_type)  # gguf-py reads every block
        assert np.all(np.isfinite(values)), name
        changed += not np.array_equal(np.asarray(t.data), np.asarray(a[name].data))
    assert changed > 0
    with open(report) as f:
        rows = json.load(f)["tensors"]
    searched = [r for r in rows if r["weighted_error"] is not None]
    assert searched and all(r["weighted_error"] <= r["reference_weighted_error"] for r in searched)
    assert sum(r["weighted_error"] for r in searched) < sum(r["reference_weighted_error"] for r in searched)
    assert all(r["rtn_weighted_error"] is None for r in rows)
    with open(report) as f:
        summary = json.load(f)["summary"]
    assert summary["settings"]["method"] == "search"
    assert summary["mean_weighted_error"] < summary["mean_reference_weighted_error"]


def test_search_starts_from_the_reference_bytes(model, tmp_path):
    """Each searched tensor equals ``search_rows`` applied to the reference encoder's
    blocks of the source values: the method is what the file holds."""
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", model, out, "--type", "Q4_K_M", "--method", "search", "--quiet"]) == 0
    tensors = _tensors(out)
    for hf, name in (("model.layers.2.mlp.down_proj.weight", "blk.2.ffn_down.weight"),
                     ("model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight")):
        t = tensors[name]
        x = read_tensor(model, hf)
        expected = ggml_blocks.encode_rows(x, t.tensor_type.name)
        ggml_blocks.search_rows(x, t.tensor_type.name, expected)
        np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected)


def test_search_is_refused_outside_type(model, tmp_path, capsys):
    assert main(["quantize", model, str(tmp_path / "x"), "--method", "search"]) == 1
    assert "--method must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q6_K", "Q5_0", "IQ4_NL"])
def test_reference_is_the_default_and_search_one_flag_away(ftype):
    from nbwoq.formats.options import QuantOptions

    assert QuantOptions(gguf_type=ftype).method == "reference"
    assert QuantOptions(gguf_type=ftype, method="search").method == "search"
