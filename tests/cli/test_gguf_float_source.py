"""``--type`` from float tensors (F32, F16, BF16 in a GGUF or a Hugging Face folder): each
tensor is widened, checked, encoded and measured a row at a time
(``ggml_blocks.encode_stored_rows``), never copied whole to float32. The oracles: gguf-py
reads the file back, and the expected bytes and errors are ``encode_rows`` on the values
widened independently (both held to the references in ``tests/formats``)."""

import json
import os

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import ggml_blocks, storage

from cli_helpers import read_tensor

gguf = pytest.importorskip("gguf")

FLOATS = {"F32": np.float32, "F16": np.float16}


def _bf16(x):
    """float32 values rounded to bfloat16 (nearest even), as gguf-py stores them."""
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16)


def _source(path, rng, dtype_name, nan_row=None):
    """A llama GGUF whose 2-D tensors are stored as ``dtype_name`` (256-wide rows), with
    float32 norms; ``nan_row``: that row of blk.1.ffn_up.weight holds a NaN."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)

    def add(name, shape):
        x = rng.standard_normal(shape).astype(np.float32)
        if nan_row is not None and name == "blk.1.ffn_up.weight":
            x[nan_row, 100] = np.nan
        if dtype_name == "BF16":
            w.add_tensor(name, _bf16(x), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, x.astype(FLOATS[dtype_name]))

    add("token_embd.weight", (64, 256))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(256).astype(np.float32))
        for part, shape in (("ffn_up", (96, 256)), ("ffn_down", (256, 512)), ("attn_q", (256, 256)),
                            ("attn_v", (128, 256))):
            add(f"blk.{i}.{part}.weight", shape)
    add("output.weight", (64, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _widened(t):
    """A gguf-py source tensor's values as float32 rows, widened here (not by nbwoq)."""
    data = np.asarray(t.data)
    if t.tensor_type.name == "BF16":
        values = (data.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        values = data.astype(np.float32)
    return np.ascontiguousarray(values.reshape(-1, int(t.shape[0])))


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M"])
@pytest.mark.parametrize("dtype_name", ["F32", "F16", "BF16"])
def test_float_source_bytes_and_errors_are_the_encoder_on_the_widened_values(tmp_path, monkeypatch, dtype_name,
                                                                              ftype):
    src = _source(tmp_path / "src.gguf", np.random.default_rng(0), dtype_name)
    out, report = str(tmp_path / "out.gguf"), str(tmp_path / "r.json")
    monkeypatch.setattr(storage, "widen", lambda *a, **k: pytest.fail("a float32 copy was made"))
    assert main(["quantize", src, out, "--type", ftype, "--method", "reference", "--quiet", "--report", report]) == 0
    monkeypatch.undo()
    rows = {r["name"]: r for r in json.load(open(report))["tensors"]}
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    checked = set()
    for t in gguf.GGUFReader(out).tensors:
        s = source[t.name]
        if t.tensor_type == s.tensor_type:
            continue
        x = _widened(s)
        raw, err, norm = ggml_blocks.encode_rows(x, t.tensor_type.name, return_error=True, iq4_nl_search=True)
        np.testing.assert_array_equal(np.asarray(t.data).view(np.uint8).reshape(raw.shape), raw, err_msg=t.name)
        assert rows[t.name]["rel_mse"] == err.sum() / norm.sum(), t.name
        checked.add(t.tensor_type.name)
    assert len(checked) >= (1 if ftype == "Q4_0" else 2), checked  # Q4_0 and the mix's other types (Q6_K, ...)


@pytest.mark.parametrize("dtype_name", ["F32", "F16", "BF16"])
def test_nan_in_a_float_source_is_one_error_and_no_output(tmp_path, capsys, dtype_name):
    src = _source(tmp_path / "src.gguf", np.random.default_rng(1), dtype_name, nan_row=7)
    out = str(tmp_path / "out.gguf")
    assert main(["quantize", src, out, "--type", "Q4_0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("nbwoq: error: tensor 'blk.1.ffn_up.weight': weight has non-finite values (NaN or Inf), "
                           "first in row 7")
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_nan_in_a_folder_source_names_the_tensor_and_row(tmp_path, capsys):
    """A Hugging Face folder goes through the same pass: the row named is the source's."""
    from nbwoq.command.demo_model import write_checkpoint
    from nbwoq.formats import safetensors_io as st

    folder = write_checkpoint(str(tmp_path / "m"), dtype="float32", hidden_size=256, intermediate_size=512,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    name = "model.layers.1.mlp.up_proj.weight"
    shard = os.path.join(folder, next(f for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")))
    tensors, _ = st.read_header(shard)
    assert name in tensors, "the demo checkpoint's layout changed"
    arrays = [(n, "F32", read_tensor(shard, n)) for n in tensors]
    arrays[list(tensors).index(name)][2][9, 3] = np.inf
    st.save_file(shard, arrays)
    out = str(tmp_path / "out.gguf")
    assert main(["quantize", folder, out, "--type", "Q8_0", "--quiet"]) == 1
    assert f"tensor '{name}': weight has non-finite values (NaN or Inf), first in row 9" in capsys.readouterr().err
    assert not os.path.exists(out)
