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
