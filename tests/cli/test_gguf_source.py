"""GGUF -> GGUF without gguf-py: our scan reads the source, ``gguf_header`` writes the
header with the source's metadata records copied byte for byte.

The oracles are gguf-py: its reader on the output, and its writer fed the source's
decoded key/values (the path nbwoq took before) for the key/values we must match.
"""

import struct

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import gguf_check, gguf_header
from nbwoq.formats.source import Source

gguf = pytest.importorskip("gguf")

OWN = ("general.file_type", "general.quantization_version", "general.quantized_by")


def _source(path, alignment=None):
    """A small llama GGUF with a key of every value type, arrays of strings, numbers and
    bools, and tensors of several types."""
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_uint8("x.u8", 200)
    w.add_int8("x.i8", -5)
    w.add_uint16("x.u16", 60000)
    w.add_int16("x.i16", -300)
    w.add_int32("x.i32", -70000)
    w.add_float32("x.f32", 0.1)
    w.add_bool("x.bool", True)
    w.add_uint64("x.u64", 2**40)
    w.add_int64("x.i64", -(2**40))
    w.add_float64("x.f64", 1 / 3)
    w.add_string("x.str", "h\u00e9llo")
    w.add_string("general.quantized_by", "someone else")  # replaced by ours
    w.add_array("tokenizer.ggml.tokens", ["a", "b\u00e9", "", "\u4e2d"])
    w.add_array("x.ints", [1, -2, 3])
    w.add_array("x.floats", [0.5, 1.5])
    w.add_array("x.bools", [True, False])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 64)).astype(np.float16))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
        q8 = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor(f"blk.{i}.ffn_up.weight", gguf.quants.quantize(rng.standard_normal((96, 64)).astype(np.float32), q8),
                     raw_dtype=q8)
        bf16 = gguf.GGMLQuantizationType.BF16
        w.add_tensor(f"blk.{i}.ffn_down.weight",
                     gguf.quants.quantize(rng.standard_normal((64, 96)).astype(np.float32), bf16), raw_dtype=bf16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _gguf_py_keys(src, out, tmp_path):
    """The key/values gguf-py's writer made of the source before (every key decoded and
    re-encoded, ours set on top), as gguf-py reads them back."""
    reader, written = gguf.GGUFReader(src), gguf.GGUFReader(out)
    path = str(tmp_path / "gguf-py.gguf")
    w = gguf.GGUFWriter(path, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "general.architecture")):
            continue
        vtype = field.types[0]
        w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for key in OWN:  # the values are ours; their types are what gguf-py's add_* methods write
        field = written.fields[key]
        w.add_key_value(key, field.contents(), field.types[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("alignment", [None, 64], ids=["align-default", "align-64"])
@pytest.mark.parametrize("args", [["--type", "Q4_0"], ["--format", "gguf"]], ids=["type-q4_0", "format-gguf"])
def test_gguf_source_header_matches_gguf_py_and_copies_records_and_data(tmp_path, monkeypatch, args, alignment):
    src = _source(tmp_path / "src.gguf", alignment)
    out = str(tmp_path / "out.gguf")
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("the run used gguf-py's reader"))
    monkeypatch.setattr(gguf, "GGUFWriter", lambda *a, **k: pytest.fail("the run used gguf-py's writer"))
    assert main(["quantize", src, out, "--quiet", *args]) == 0
    monkeypatch.undo()
    reader = gguf.GGUFReader(out)
    got = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert got == _gguf_py_keys(src, out, tmp_path)
    assert got["general.quantized_by"].startswith("nbwoq ")
    assert reader.alignment == (alignment or 32) and got.get("general.alignment") == alignment
    # every source record other than ours is in the output as the same bytes, in order
    src_records, out_records = Source(src).gguf_records(), Source(out).gguf_records()
    kept = [k for k in src_records if k not in OWN]
    assert [k for k in out_records if k not in OWN] == kept
    assert all(out_records[k] == src_records[k] for k in kept)
    assert list(out_records)[-3:] == list(OWN)
    # tensors: names and order kept; copied ones byte for byte; the rest decode close to the source
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    assert [t.name for t in reader.tensors] == list(source)
    quantized = 0
    for t in reader.tensors:
        s = source[t.name]
        if t.tensor_type == s.tensor_type:
            assert np.asarray(t.data).tobytes() == np.asarray(s.data).tobytes(), t.name
        else:
            quantized += 1
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            b = gguf.quants.dequantize(s.data, s.tensor_type)
            assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.2, t.name
    assert quantized >= 4
    assert gguf_check.scan(out).data_start % (alignment or 32) == 0


def test_gguf_source_header_is_deterministic(tmp_path):
    src = _source(tmp_path / "src.gguf")
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    assert main(["quantize", src, a, "--type", "Q4_0", "--quiet"]) == 0
    assert main(["quantize", src, b, "--type", "Q4_0", "--quiet"]) == 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_big_endian_gguf_is_refused_with_one_line(tmp_path):
    from nbwoq.formats.errors import InputError

    key = b"general.architecture"
    body = (b"GGUF" + struct.pack(">IQQ", 3, 0, 1) + struct.pack(">Q", len(key)) + key + struct.pack(">IQ", 8, 5)
            + b"llama")
    path = tmp_path / "be.gguf"
    path.write_bytes(body + bytes(-len(body) % 32))
    with pytest.raises(InputError, match="big-endian"):
        Source(str(path))


def test_header_records_match_gguf_py_encoding(tmp_path):
    """Our UINT32 and STRING records are the bytes gguf-py writes for the same key/value."""
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    assert gguf_header.uint32_record("k", 7) == w._pack_val("k", gguf.GGUFValueType.STRING, add_vtype=False) + \
        w._pack_val(7, gguf.GGUFValueType.UINT32, add_vtype=True)
    assert gguf_header.string_record("k\u00e9", "v\u4e2d") == w._pack_val("k\u00e9", gguf.GGUFValueType.STRING, add_vtype=False) + \
        w._pack_val("v\u4e2d", gguf.GGUFValueType.STRING, add_vtype=True)
    with pytest.raises(ValueError, match="UINT32"):
        gguf_header.uint32_record("k", 2**32)
    with pytest.raises(ValueError, match="power of two"):
        gguf_header.header([], [], 48)
