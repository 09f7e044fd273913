"""``--type``: llama-quantize's file types and mixes, encoded by llama.cpp's own rules.

The oracles are independent of the writer: gguf-py reads the file back (types, shapes,
its own dequantizers), and the expected bytes of each tensor are ``ggml_blocks``'
encoder run on the source values (itself checked byte for byte against llama.cpp and
gguf-py in ``tests/formats``).
"""

import os

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import ggml_blocks
from nbwoq.formats.gguf_mix import plan_types

from cli_helpers import read_tensor

gguf = pytest.importorskip("gguf")

# 256-wide rows so the K-quants apply without fallback; 4 layers for the mix rules.
SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from nbwoq.command.demo_model import write_checkpoint

    return write_checkpoint(str(tmp_path_factory.mktemp("k")), **SHAPE)


def _tensors(path):
    reader = gguf.GGUFReader(path)
    return {t.name: t for t in reader.tensors}, reader


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q5_K_S", "Q6_K", "Q8_0", "IQ4_NL"])
def test_file_types_follow_the_mix_and_decode_with_gguf_py(model, tmp_path, ftype):
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", model, out, "--type", ftype, "--quiet"]) == 0
    tensors, reader = _tensors(out)
    expected = plan_types([(n, tuple(int(d) for d in reversed(t.shape))) for n, t in tensors.items()],
                          ftype, "llama", SHAPE["num_hidden_layers"], n_gqa=2)
    for name, t in tensors.items():
        want = expected[name] or "F32"
        assert t.tensor_type.name == want, name
    assert int(reader.fields["general.file_type"].contents()) == gguf.LlamaFileType[f"MOSTLY_{ftype}"].value
    # every quantized tensor: gguf-py's dequantizer equals ours, and is close to the source
    q = tensors["blk.1.ffn_up.weight"]
    ours = ggml_blocks.decode_rows(np.ascontiguousarray(q.data).reshape(q.data.shape[0], -1), q.tensor_type.name,
                                   SHAPE["hidden_size"])
    np.testing.assert_array_equal(gguf.quants.dequantize(q.data, q.tensor_type), ours)
    source = read_tensor(model, "model.layers.1.mlp.up_proj.weight")
    assert np.linalg.norm(ours - source) / np.linalg.norm(source) < 0.2


def test_reference_bytes_are_llama_cpp_encoder_on_the_source_values(model, tmp_path):
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", model, out, "--type", "Q4_K_M", "--method", "reference", "--quiet"]) == 0
    tensors, _ = _tensors(out)
    for hf, name in (("model.layers.2.mlp.down_proj.weight", "blk.2.ffn_down.weight"),
                     ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight")):
        t = tensors[name]
        expected = ggml_blocks.encode_rows(read_tensor(model, hf), t.tensor_type.name)
        np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected)


def test_query_rows_are_permuted_to_llama_cpp_order(model, tmp_path):
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", model, out, "--type", "Q8_0", "--pure", "--quiet"]) == 0
    t = _tensors(out)[0]["blk.0.attn_q.weight"]
    w = read_tensor(model, "model.layers.0.self_attn.q_proj.weight")
    heads = SHAPE["num_attention_heads"]
    perm = np.arange(w.shape[0]).reshape(heads, 2, -1).swapaxes(1, 2).reshape(-1)
    np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape[0], -1), ggml_blocks.encode_rows(w[perm], "Q8_0"))


def test_gguf_to_gguf_copies_tensors_already_in_their_type_byte_for_byte(model, tmp_path):
    first, second = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    assert main(["quantize", model, first, "--type", "Q4_K_M", "--quiet"]) == 0
    assert main(["quantize", first, second, "--type", "Q4_K_M", "--quiet"]) == 0
    a, b = _tensors(first)[0], _tensors(second)[0]
    assert list(a) == list(b)  # order kept
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type
        np.testing.assert_array_equal(np.asarray(a[name].data), np.asarray(b[name].data))


def test_gguf_to_gguf_keeps_every_key(model, tmp_path):
    first, second = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    assert main(["quantize", model, first, "--type", "F16", "--quiet"]) == 0
    assert main(["quantize", first, second, "--type", "Q5_K_M", "--quiet"]) == 0
    ra, rb = _tensors(first)[1], _tensors(second)[1]
    skip = ("GGUF.", "general.file_type", "general.quantized_by")
    keys_a = {k: f.contents() for k, f in ra.fields.items() if not k.startswith(skip)}
    keys_b = {k: f.contents() for k, f in rb.fields.items() if not k.startswith(skip)}
    assert keys_a == keys_b


def test_type_and_another_format_is_refused(model, tmp_path, capsys):
    assert main(["quantize", model, str(tmp_path / "x"), "--type", "Q4_K_M", "--format", "nbwoq"]) == 1
    assert "--type Q4_K_M writes GGUF" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
