"""Files made by strangers: every size, count and name in them is untrusted.

Each case here once got through (a wrapped int64 shape product, a duplicate key kept
silently, a RecursionError, a GGUF count that made gguf-py loop or allocate without end,
nbwoq metadata that steered the unchecked decoding kernel out of bounds). Mainstream
readers (the safetensors library, gguf-py's own checks, llama.cpp's loader) refuse them;
so must we, with the error type of the reader and a message naming the file.
"""

import json
import os
import struct
import time

import numpy as np
import pytest

import nbwoq
from nbwoq.formats import safetensors_io as st
from nbwoq.formats import errors


def _st_file(path, header, data=b"", raw=None):
    raw = json.dumps(header).encode() if raw is None else raw
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


_W = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


# -- 1. safetensors headers ---------------------------------------------------------

@pytest.mark.parametrize("header, raw, match", [
    # 2**40 * 2**40 * 4 wraps to 0 in int64: the empty byte range "matched"
    pytest.param({"w": dict(_W, shape=[2**40, 2**40], data_offsets=[0, 0])}, None, "needs 4835703278458516698824704 bytes, header gives 0",
                 id="shape-product-wraps-int64"),
    pytest.param({"w": dict(_W, shape=[2**32, 2**32], data_offsets=[0, 0])}, None, "needs", id="shape-product-wraps-to-0"),
    pytest.param({"w": dict(_W, shape=[2**70, 0], data_offsets=[0, 0])}, None, "too large for an array", id="empty-but-huge"),
    pytest.param({"w": dict(_W, shape=[True, 4])}, None, "dimensions must be integers", id="bool-dim"),
    pytest.param({"w": dict(_W, shape=[2.0, 2.0])}, None, "dimensions must be integers", id="float-dim"),
    pytest.param({"w": dict(_W, shape=["2", "2"])}, None, "dimensions must be integers", id="str-dim"),
    pytest.param({"w": dict(_W, data_offsets=[0.0, 16.0])}, None, "two integers expected", id="float-offsets"),
    pytest.param({"w": dict(_W, data_offsets=[0, 16, 32])}, None, "two integers expected", id="three-offsets"),
    pytest.param({"w": dict(_W, dtype=["F32"])}, None, "needs dtype, shape, data_offsets", id="unhashable-dtype"),
    pytest.param({"w": [1, 2]}, None, "needs dtype, shape, data_offsets", id="entry-not-object"),
    pytest.param({"w": dict(_W, data_offsets=[0, 2**70])}, None, "truncated", id="offset-beyond-file"),
    pytest.param(None, b'{"w": %s, "w": %s}' % (json.dumps(_W).encode(), json.dumps(_W).encode()), "key 'w' twice",
                 id="duplicate-tensor-name"),
    pytest.param(None, b"[" * 100_000 + b"]" * 100_000, "nests 100000 levels", id="deep-nesting"),
    pytest.param(None, b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}',
                 "not valid JSON", id="5000-digit-int"),
    pytest.param(None, b'{"w\xff": 1}', "not valid UTF-8", id="header-not-utf8"),
    pytest.param({"__metadata__": {"k": 1}, "w": _W}, None, "object of strings", id="metadata-int-value"),
    pytest.param({"__metadata__": [], "w": _W}, None, "object of strings", id="metadata-list"),
    pytest.param(None, b'{"\\ud800": %s}' % json.dumps(_W).encode(), "not valid UTF-8", id="lone-surrogate-name"),
])
def test_hostile_safetensors_header_is_a_format_error(tmp_path, header, raw, match):
    path = _st_file(tmp_path / "bad.safetensors", header, bytes(16), raw)
    with pytest.raises(st.FormatError, match=match):
        st.read_header(path)


def test_control_characters_in_a_tensor_name_are_escaped(tmp_path):
    name = "w\x1b[2J\nnbwoq: all good"
    path = _st_file(tmp_path / "bad.safetensors", {name: dict(_W, dtype="F128")}, bytes(16))
    with pytest.raises(st.FormatError) as info:
        st.read_header(path)
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message and errors.printable(name) in message


# -- 2. GGUF headers ----------------------------------------------------------------

def _s(text):
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(raw)) + raw


_ARCH = _s("general.architecture") + struct.pack("<I", 8) + _s("llama")


def _gguf(path, kvs=(_ARCH,), tensors=(), data=b"", n_tensors=None, n_kv=None, version=3):
    """A GGUF file from raw metadata entries and tensor infos (bytes), padded to 32."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    body += bytes(-len(body) % 32)
    path.write_bytes(body + data)
    return str(path)


def _tensor(name, dims, ggml_type=0, offset=0):
    return _s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml_type, offset)


def _array(key, itype, count, items=b""):
    return _s(key) + struct.pack("<IIQ", 9, itype, count) + items


@pytest.mark.parametrize("kvs, tensors, kw, match", [
    # gguf-py looped (and allocated) for each of the 2**62 declared items of a 94-byte file
    pytest.param((_ARCH, _array("x", 0, 2**62)), (), {}, "declares 4611686018427387904 items", id="2**62-array-items"),
    pytest.param((_ARCH, _array("x", 8, 2**61)), (), {}, "declares 2305843009213693952 items", id="2**61-strings"),
    pytest.param((_ARCH, _s("x") + struct.pack("<I", 8) + struct.pack("<Q", 2**60)), (), {}, r"\(1152921504606846976 bytes\)",
                 id="2**60-byte-string"),
    pytest.param((_ARCH,), (), dict(n_kv=2**62), "4611686018427387904 metadata entries declared", id="2**62-kv"),
    pytest.param((_ARCH,), (), dict(n_tensors=2**62), "4611686018427387904 tensors declared", id="2**62-tensors"),
    pytest.param((_ARCH, _array("x", 9, 1, struct.pack("<IQ", 0, 0))), (), {}, "nested arrays", id="nested-array"),
    pytest.param((_ARCH, _array("x", 13, 1)), (), {}, "array of type 13", id="unknown-item-type"),
    pytest.param((_ARCH, _s("x") + struct.pack("<I", 99)), (), {}, "unknown value type 99", id="unknown-value-type"),
    pytest.param((_ARCH, _ARCH), (), {}, "'general.architecture' appears twice", id="duplicate-key"),
    pytest.param((), (), {}, "no general.architecture", id="no-architecture"),
    pytest.param((_s("general.architecture") + struct.pack("<II", 4, 1),), (), {}, "no general.architecture",
                 id="architecture-not-a-string"),
    pytest.param((_ARCH, _s("general.alignment") + struct.pack("<II", 4, 3)), (), {}, "power of two", id="alignment-3"),
    # a copy pads its header to the alignment: 2**31 would be 2 GiB of zeros from a tiny file
    pytest.param((_ARCH, _s("general.alignment") + struct.pack("<II", 4, 2**31)), (), {}, "larger than the whole file",
                 id="alignment-2**31"),
    pytest.param((_ARCH, _s(b"k\xff") + struct.pack("<I", 0) + b"\0"), (), {}, r"'k\\\\xff' is not valid UTF-8", id="key-not-utf8"),
    pytest.param((_ARCH,), (_tensor("w", [2**32, 2**32]),), {}, "beyond int64|ends at byte", id="dims-product-wraps-uint64"),
    pytest.param((_ARCH,), (_tensor("w", [2**40, 2**30]),), {}, "beyond int64", id="dims-beyond-int64"),
    pytest.param((_ARCH,), (_tensor("w", [1, 1, 1, 1, 1]),), {}, "5 dimensions; ggml allows at most 4", id="5-dims"),
    pytest.param((_ARCH,), (_tensor("w", [8, 8], offset=2**40),), {}, "truncated: tensor 'w' ends at byte", id="offset-beyond-file"),
    pytest.param((_ARCH,), (_tensor("w", [64, 64]),), {}, "truncated: tensor 'w' ends at byte", id="data-beyond-file"),
    pytest.param((_ARCH,), (_tensor("w", [16], ggml_type=2),), {}, "not whole blocks of 32", id="partial-q4_0-block"),
    pytest.param((_ARCH,), (_tensor("w", [4], ggml_type=77),), {}, "unknown ggml type 77", id="unknown-ggml-type"),
    pytest.param((_ARCH,), (_tensor("w", [16]), _tensor("v", [4], offset=32)), {}, "'w' and 'v' overlap", id="overlap"),
    pytest.param((_ARCH,), (_tensor("w", [4], offset=4),), {}, "not a multiple of the alignment", id="misaligned"),
    pytest.param((_ARCH,), (_tensor(b"w\xff", [4]),), {}, "is not valid UTF-8", id="name-not-utf8"),
    pytest.param((_ARCH,), (), dict(version=1), "version 1", id="version-1"),
])
def test_hostile_gguf_header_is_one_input_error_at_once(tmp_path, kvs, tensors, kw, match):
    from nbwoq.formats.source import Source

    path = _gguf(tmp_path / "bad.gguf", kvs, tensors, data=bytes(64), **kw)
    start = time.perf_counter()
    with pytest.raises(errors.InputError, match=match) as info:
        Source(path)
    assert time.perf_counter() - start < 5
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


def test_94_byte_gguf_declaring_2_62_items_is_refused_before_gguf_py(tmp_path, monkeypatch):
    import gguf

    from nbwoq.formats.source import Source

    path = _gguf(tmp_path / "bad.gguf", (_ARCH, _array("x", 0, 2**62)))
    assert os.path.getsize(path) == 96  # 94 bytes of header, padded to 32
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("gguf-py was handed an unchecked file"))
    with pytest.raises(errors.InputError, match="declares 4611686018427387904 items"):
        Source(path)


def test_gguf_tensor_name_with_control_characters_is_escaped(tmp_path):
    from nbwoq.formats.source import Source

    name = "w\x1b]0;pwned\x07\nnbwoq: done"
    path = _gguf(tmp_path / "bad.gguf", (_ARCH,), (_tensor(name, [4]), _tensor(name, [4], offset=32)), bytes(64))
    with pytest.raises(errors.InputError) as info:
        Source(path)
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message and "\x07" not in message


def test_valid_gguf_still_opens(tmp_path):
    gguf = pytest.importorskip("gguf")
    from nbwoq.formats.source import Source

    path = str(tmp_path / "ok.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "b\u00e9"])
    w.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32))
    q4_0 = gguf.GGMLQuantizationType.Q4_0
    w.add_tensor("q", gguf.quants.quantize(np.ones((2, 32), np.float32), q4_0), raw_dtype=q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    source = Source(path)
    infos = {info.name: info for _, info in source.tensors()}
    assert infos["w"].shape == (2, 32) and infos["q"].shape == (2, 32) and infos["q"].dtype == "Q4_0"
    with source.open(infos["w"]) as (array, dtype):
        np.testing.assert_array_equal(array, np.arange(64, dtype=np.float32).reshape(2, 32))


# -- 3. nbwoq-format files ----------------------------------------------------------

_ROWS, _COLS = 4, 64


def _saved(tmp_path, **settings):
    """(metadata of ``a.weight``, its parts) of a real nbwoq file with ``settings``."""
    w = np.random.default_rng(0).standard_normal((_ROWS, _COLS)).astype(np.float32)
    good = str(tmp_path / "good.safetensors")
    nbwoq.save({"a.weight": w}, good, **settings)
    tensors, metadata = st.read_header(good)
    parts = {}
    for name, info in tensors.items():
        with st.TensorMap(info) as a:
            parts[name] = (info.dtype, np.array(a))
    return json.loads(metadata["nbwoq.tensors"])["a.weight"], parts


def _nbwoq_file(path, meta, parts, tensors_json=None):
    """An nbwoq-format file holding ``parts`` (name -> (dtype name, array)) and, as the
    metadata of ``a.weight``, ``meta`` (or the raw ``tensors_json``)."""
    metadata = {"format": "nbwoq", "nbwoq.version": "1",
                "nbwoq.tensors": json.dumps({"a.weight": meta}) if tensors_json is None else tensors_json}
    st.save_file(str(path), [(n, d, a) for n, (d, a) in parts.items()], metadata)
    return str(path)


@pytest.mark.parametrize("settings", [
    pytest.param(dict(bits=4, group_size=16, scheme="sym"), id="int4-sym"),
    pytest.param(dict(bits=4, group_size=16, dtype="nf4"), id="nf4"),
])
def test_stray_zeros_part_is_refused_not_ignored(tmp_path, settings):
    # load read a .zeros part the scheme does not use, and dequantize handed it to the
    # unchecked kernel: a (1, 1) one made it index zp[r, g] far beyond its end
    meta, parts = _saved(tmp_path, **settings)
    parts["a.weight.zeros"] = ("U8", np.zeros((1, 1), np.uint8))
    path = _nbwoq_file(tmp_path / "bad.safetensors", meta, parts)
    with pytest.raises(ValueError, match="stray part 'a.weight.zeros'"):
        nbwoq.load(path)
    codes, scales = parts["a.weight.codes"][1], parts["a.weight.scales"][1]
    tensor = nbwoq.load(_nbwoq_file(tmp_path / "ok.safetensors", meta, {k: v for k, v in parts.items() if "zeros" not in k}))
    tensor = tensor["a.weight"]
    tensor.zeros = np.zeros((1, 1), np.uint8)
    with pytest.raises(ValueError, match="zeros given"):
        nbwoq.dequantize(tensor)
    assert codes.shape == tensor.codes.shape and scales.shape == tensor.scales.shape


@pytest.mark.parametrize("edit, match", [
    pytest.param(dict(shape=[4.0, 64]), "shape must be a list of two non-negative integers", id="float-rows"),
    pytest.param(dict(shape=[4, 64.9]), "shape must be", id="float-cols"),
    pytest.param(dict(shape=[True, 64]), "shape must be", id="bool-rows"),
    pytest.param(dict(shape=["4", "64"]), "shape must be", id="str-dims"),
    pytest.param(dict(shape=[-4, 64]), "shape must be", id="negative-rows"),
    pytest.param(dict(shape=[4, 64, 1]), "shape must be", id="3-d-shape"),
    pytest.param(dict(qmin=-8.0), "qmin must be an integer", id="float-qmin"),
    pytest.param(dict(bits=True), "bits must be an integer", id="bool-bits"),
    pytest.param(dict(group_size=16.0), "group_size must be an integer", id="float-group-size"),
    pytest.param(dict(group_size=-2), "group_size must be -1 or a positive integer", id="group-size--2"),
    pytest.param(dict(bits=17), "bits must be 1 to 16", id="bits-17"),
    pytest.param(dict(full_range="yes"), "full_range must be true or false", id="str-full-range"),
    pytest.param(dict(dtype="F99"), "unknown source dtype 'F99'", id="unknown-dtype"),
    pytest.param(dict(dtype=None), "unknown source dtype None", id="null-dtype"),
    pytest.param(dict(scheme=["sym"]), "unknown codebook", id="unhashable-scheme"),
])
def test_nbwoq_metadata_values_are_type_checked(tmp_path, edit, match):
    meta, parts = _saved(tmp_path, bits=4, group_size=16, scheme="sym")
    path = _nbwoq_file(tmp_path / "bad.safetensors", dict(meta, **edit), parts)
    with pytest.raises(ValueError, match=match):
        nbwoq.load(path)


@pytest.mark.parametrize("part, dtype, array, match", [
    pytest.param("a.weight.codes", "I8", np.zeros((4, 32), np.int8), "codes must be uint8", id="int8-codes"),
    pytest.param("a.weight.scales", "F16", np.zeros((4, 4), np.float16), "scales must be float32", id="f16-scales"),
    pytest.param("a.weight.scales", "F32", np.zeros((4, 1), np.float32), r"scales must be float32 of shape \(4, 4\)", id="short-scales"),
    pytest.param("a.weight.zeros", "BF16", np.zeros((4, 4), np.uint16), "zeros must be uint8 or uint16", id="bf16-zeros"),
])
def test_nbwoq_parts_are_checked_against_the_header_before_reading(tmp_path, monkeypatch, part, dtype, array, match):
    from nbwoq.formats import nbwoq_io

    meta, parts = _saved(tmp_path, bits=4, group_size=16)
    parts[part] = (dtype, array)
    path = _nbwoq_file(tmp_path / "bad.safetensors", meta, parts)
    monkeypatch.setattr(nbwoq_io, "_read", lambda info: pytest.fail(f"read {info.name} before checking it"))
    with pytest.raises(ValueError, match=match):
        nbwoq.load(path)


def test_zero_columns_with_2_60_rows_allocates_nothing(tmp_path):
    # np.zeros((rows, 1)) stood in for the absent zero points: 4 EiB for a 0-byte file
    meta, _ = _saved(tmp_path, bits=4, group_size=16, scheme="sym")
    rows = 2**60
    parts = {"a.weight.codes": ("U8", np.zeros((rows, 0), np.uint8)),
             "a.weight.scales": ("F32", np.zeros((rows, 0), np.float32))}
    path = _nbwoq_file(tmp_path / "empty.safetensors", dict(meta, shape=[rows, 0]), parts)
    out = nbwoq.dequantize(nbwoq.load(path)["a.weight"])
    assert out.shape == (rows, 0) and out.nbytes == 0


@pytest.mark.parametrize("tensors_json, match", [
    pytest.param("[" * 50_000 + "]" * 50_000, "nests 50000 levels", id="deep-nesting"),
    pytest.param('{"a.weight": {}, "a.weight": {}}', "key 'a.weight' twice", id="duplicate-name"),
    pytest.param('{"a.weight": 1}', "expected an object of objects", id="not-objects"),
])
def test_nbwoq_tensors_metadata_is_strict_json(tmp_path, tensors_json, match):
    _, parts = _saved(tmp_path, bits=4, group_size=16)
    path = _nbwoq_file(tmp_path / "bad.safetensors", None, parts, tensors_json=tensors_json)
    with pytest.raises(ValueError, match=match):
        nbwoq.load(path)


def test_quantized_name_also_stored_plain_is_refused(tmp_path):
    meta, parts = _saved(tmp_path, bits=4, group_size=16)
    parts["a.weight"] = ("F32", np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match="both quantized and as a plain tensor"):
        nbwoq.load(_nbwoq_file(tmp_path / "bad.safetensors", meta, parts))


def test_tensor_in_two_shards_is_refused(tmp_path):
    meta, parts = _saved(tmp_path, bits=4, group_size=16)
    folder = tmp_path / "model"
    folder.mkdir()
    _nbwoq_file(folder / "a.safetensors", meta, parts)
    _nbwoq_file(folder / "b.safetensors", meta, parts)
    with pytest.raises(ValueError, match="'a.weight' is also in"):
        nbwoq.load(str(folder))


# -- 4. SentencePiece models (tokenizer.model) -------------------------------------------

def _sp(*pieces, trainer=b""):
    from sentencepiece_files import model_bytes

    return model_bytes(pieces, trainer=trainer)


def _sp_cases():
    from sentencepiece_files import BYTE, CONTROL, UNKNOWN, field, small_pieces, varint

    valid = _sp(*small_pieces())
    unk = ("<unk>", 0.0, UNKNOWN)
    return [
        pytest.param(valid[:-3], "runs past the end|declares", id="truncated"),
        pytest.param(valid[:1], "runs past the end", id="one-byte"),
        pytest.param(b"", "holds no pieces", id="empty"),
        pytest.param(b"\x0a" + varint(2**62) + b"xx", "declares 4611686018427387904 bytes", id="huge-length"),
        pytest.param(b"\x0a" + varint(2**64 - 1) + b"xx", "declares", id="length-2**64-1"),
        pytest.param(b"\x0a" + b"\xff" * 11, "longer than 10 bytes", id="endless-varint"),
        pytest.param(b"\x0a" + b"\xff" * 9 + b"\x7f", "exceeds 64 bits", id="varint-past-64-bits"),
        pytest.param(b"\x0b\x00", "wire type 3", id="group-start"),
        pytest.param(b"\x0f\x00", "wire type 7", id="bad-wire-type"),
        pytest.param(b"\x02\x00", "field number 0", id="field-zero"),
        pytest.param(b"\x08\x01", "field 1 \\(a piece\\) has wire type 0", id="piece-as-varint"),
        pytest.param(field(1, 2, field(1, 0, 5)), "wire type 0, expected 2", id="piece-text-as-varint"),
        pytest.param(field(1, 2, field(1, 2, b"a") + field(2, 0, 1)), "wire type 0, expected 5", id="score-as-varint"),
        pytest.param(field(1, 2, field(1, 2, b"\xff\xfe")), "not valid UTF-8", id="piece-not-utf8"),
        pytest.param(field(1, 2, field(1, 2, b"a") + field(3, 0, 9)) + _sp(unk), "type 9", id="unknown-type"),
        pytest.param(_sp(unk, ("", 0.0, None)), "piece 1 is empty", id="empty-piece"),
        pytest.param(_sp(unk, ("a", 0.0, None), ("a", -1.0, None)), "both piece 1 and piece 2", id="duplicate-piece"),
        pytest.param(_sp(unk, ("<0xZZ>", 0.0, BYTE)), "not <0xXX>", id="bad-byte-piece"),
        pytest.param(_sp(("<s>", 0.0, CONTROL)), "0 unknown pieces", id="no-unknown"),
        pytest.param(_sp(unk, ("<u2>", 0.0, UNKNOWN)), "2 unknown pieces", id="two-unknowns"),
        pytest.param(_sp(unk) + field(2, 2, b"\x08"), "runs past the end", id="truncated-trainer-spec"),
        pytest.param(b"PK\x03\x04" + bytes(60), "wire type|runs past|declares|field number", id="zip-file"),
    ]


@pytest.mark.parametrize("data, match", _sp_cases())
def test_hostile_sentencepiece_model_is_one_input_error(tmp_path, data, match):
    from nbwoq.formats import sentencepiece_model

    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(errors.InputError, match=match) as info:
        sentencepiece_model.read_pieces(str(path))
    assert "\n" not in str(info.value) and "not a valid SentencePiece model" in str(info.value)


def test_sentencepiece_model_larger_than_the_limit_is_not_read(tmp_path):
    from nbwoq.formats import sentencepiece_model

    path = tmp_path / "tokenizer.model"
    path.write_bytes(bytes(2048))
    with pytest.raises(errors.InputError, match="too large for a SentencePiece model \\(2048 bytes\\)"):
        sentencepiece_model.read_pieces(str(path), max_bytes=1024)


@pytest.mark.parametrize("data, match", [pytest.param(*p.values, id=p.id) for p in _sp_cases()
                                         if p.id in ("huge-length", "endless-varint", "duplicate-piece")])
def test_hostile_tokenizer_model_stops_the_gguf_run_before_anything_is_written(tmp_path, capsys, data, match):
    from nbwoq.command.cli import main
    from nbwoq.command.demo_model import write_checkpoint

    src = write_checkpoint(str(tmp_path / "src"), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    (tmp_path / "src" / "tokenizer.model").write_bytes(data)
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(src), str(out), "--type", "Q8_0", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nbwoq: error:") and "tokenizer.model" in err, err
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no OUT, no OUT.partial, no scratch


# -- 5. names in messages -----------------------------------------------------------

def test_nbwoq_tensor_name_with_control_characters_is_escaped(tmp_path):
    meta, parts = _saved(tmp_path, bits=4, group_size=16)
    name = "a\x1b[2J\rweight"
    parts = {name + k[len("a.weight"):]: v for k, v in parts.items() if not k.endswith(".scales")}
    path = _nbwoq_file(tmp_path / "bad.safetensors", None, parts, tensors_json=json.dumps({name: meta}))
    with pytest.raises(ValueError) as info:
        nbwoq.load(path)
    assert "lacks its part" in str(info.value) and "\x1b" not in str(info.value) and "\r" not in str(info.value)


def test_gguf_check_value_table_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    from nbwoq.formats import gguf_check

    for code, (name, fmt) in gguf_check.SCALARS.items():
        vtype = gguf.GGUFValueType(code)
        assert vtype.name == name
        assert struct.calcsize("<" + fmt) == np.dtype(gguf.GGUFReader.gguf_scalar_to_np[vtype]).itemsize
    assert gguf.GGUFValueType(gguf_check.STRING).name == "STRING" and gguf.GGUFValueType(gguf_check.ARRAY).name == "ARRAY"
    assert set(gguf_check.SCALARS) | {gguf_check.STRING, gguf_check.ARRAY} == {int(v) for v in gguf.GGUFValueType}
    assert gguf_check.MAGIC == struct.pack("<I", gguf.GGUF_MAGIC) and gguf_check.DEFAULT_ALIGNMENT == gguf.GGUF_DEFAULT_ALIGNMENT
