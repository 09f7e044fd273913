"""The safetensors reader/writer: round trips and every kind of broken file."""

import errno
import json
import os
import struct

import numpy as np
import pytest

from nbwoq.formats import safetensors_io as st


def _write(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def test_round_trip_and_bf16_pattern(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([0x3F80, 0xC000], dtype=np.uint16)  # bfloat16 1.0, -2.0
    path = str(tmp_path / "x.safetensors")
    st.save_file(path, [("a", "F32", a), ("b", "BF16", b)], {"k": "v"})
    tensors, meta = st.read_header(path)
    assert meta == {"k": "v"}
    assert list(tensors) == ["a", "b"] and tensors["b"].dtype == "BF16"
    with st.TensorMap(tensors["a"]) as x:
        np.testing.assert_array_equal(x, a)
        assert not x.flags.writeable
    with st.TensorMap(tensors["b"]) as x:
        np.testing.assert_array_equal(x, b)


def test_readable_by_safetensors_library(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float16)
    path = str(tmp_path / "x.safetensors")
    st.save_file(path, [("w", "F16", a)])
    np.testing.assert_array_equal(safetensors_numpy.load_file(path)["w"], a)


@pytest.mark.parametrize("case, match", [
    ("short", "shorter than the 8-byte"),
    ("header_beyond_file", "truncated or corrupt safetensors header"),
    ("bad_json", "not valid JSON"),
    ("bad_dtype", "unsupported dtype 'F128'"),
    ("size_mismatch", "needs 16 bytes, header gives 12"),
    ("truncated_data", "truncated: tensor 'w' ends at byte"),
    ("overlap", "overlap"),
    ("bool_dim", "dimensions must be integers"),
    ("duplicate_name", "gives key 'w' twice"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_broken_files_raise_naming_the_problem(tmp_path, case, match):
    path = tmp_path / "bad.safetensors"
    w = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    if case == "short":
        path.write_bytes(b"\x01\x02")
    elif case == "header_beyond_file":
        path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    elif case == "bad_json":
        path.write_bytes(struct.pack("<Q", 5) + b"{nope")
    elif case == "bad_dtype":
        _write(path, {"w": dict(w, dtype="F128")}, bytes(16))
    elif case == "size_mismatch":
        _write(path, {"w": dict(w, data_offsets=[0, 12])}, bytes(16))
    elif case == "truncated_data":
        _write(path, {"w": w}, bytes(10))
    elif case == "overlap":
        _write(path, {"w": w, "v": dict(w, data_offsets=[8, 24])}, bytes(24))
    elif case == "bool_dim":  # int(True) == 1 passed as a dimension
        _write(path, {"w": dict(w, shape=[True, 4])}, bytes(16))
    elif case == "duplicate_name":  # json.loads kept the last of two entries
        raw = b'{"w": %s, "w": %s}' % (json.dumps(w).encode(), json.dumps(w).encode())
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with pytest.raises(st.FormatError, match=match):
        st.read_header(str(path))


def test_stream_writer_refuses_out_of_plan_writes(tmp_path):
    w = st.StreamWriter(str(tmp_path / "x.safetensors"), [("a", "F32", (2,))])
    with pytest.raises(RuntimeError, match="expected tensor 'a'"):
        w.write("b", np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="closed before"):
        w.close()


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [(f"t{i}", "F32", rng.standard_normal((int(rng.integers(1, 50)), 3)).astype(np.float32)) for i in range(7)]


def test_background_writer_writes_the_same_bytes(tmp_path):
    arrays = _arrays()
    specs = [(n, d, a.shape) for n, d, a in arrays]
    st.save_file(str(tmp_path / "sync.safetensors"), arrays, {"k": "v"})
    w = st.StreamWriter(str(tmp_path / "bg.safetensors"), specs, {"k": "v"}, background=True)
    tickets = [w.write(n, a) for n, _, a in arrays]
    assert tickets == list(range(1, len(arrays) + 1))
    w.wait(3)
    w.close()
    assert (tmp_path / "bg.safetensors").read_bytes() == (tmp_path / "sync.safetensors").read_bytes()


def test_background_writer_error_reaches_the_caller(tmp_path, monkeypatch):
    """A full disk on the writer thread is raised by the next write, wait or close, and
    abort() after it neither raises nor hangs."""
    arrays = _arrays(1)
    specs = [(n, d, a.shape) for n, d, a in arrays]
    w = st.StreamWriter(str(tmp_path / "x.safetensors"), specs, background=True)
    real = os.write

    def full(fd, data):
        if fd == w._file.fileno():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(st.os, "write", full)
    first = w.write(*arrays[0][::2])
    with pytest.raises(OSError, match="No space left"):
        w.wait(first)
    w.abort()
    assert w._file is None


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "read-write fallback"])
@pytest.mark.parametrize("background", [False, True], ids=["sync", "background"])
def test_copy_range_writes_the_source_bytes(tmp_path, monkeypatch, kernel_copy, background):
    arrays = _arrays(2)
    specs = [(n, d, a.shape) for n, d, a in arrays]
    source = str(tmp_path / "src.safetensors")
    st.save_file(source, arrays)
    tensors, _ = st.read_header(source)
    if not kernel_copy:
        def refuse(*args):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        monkeypatch.setattr(st.os, "copy_file_range", refuse, raising=False)
    w = st.StreamWriter(str(tmp_path / "out.safetensors"), specs, background=background)
    for i, (n, _, a) in enumerate(arrays):
        if i % 2:  # alternate with plain writes: both share the file position
            info = tensors[n]
            w.copy_range(n, info.path, info.start, info.nbytes)
        else:
            w.write(n, a)
    w.close()
    assert (tmp_path / "out.safetensors").read_bytes() == open(source, "rb").read()


def test_copy_range_of_a_shrunken_source_is_an_error(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(10)))
    w = st.StreamWriter(str(tmp_path / "out.safetensors"), [("a", "F32", (4,))])
    with pytest.raises(st.FormatError, match="ended before byte"):
        w.copy_range("a", str(source), 0, 16)
    w.abort()
    with pytest.raises(RuntimeError, match="expected tensor 'a'"):
        st.StreamWriter(str(tmp_path / "o2.safetensors"), [("a", "F32", (4,))]).copy_range("a", str(source), 0, 8)
