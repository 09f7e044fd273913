"""Checkpoint sources: a Hugging Face folder, one safetensors file, or a GGUF file.

Every header is read and checked when the source is opened, before anything is
written, so a truncated shard or a broken index fails the run up front. Tensor data is
read later, one tensor at a time (``Source.open``), from a memory map of just that
tensor's bytes.
"""

import contextlib
import json
import math
import os

import numpy as np

from nbwoq.formats import ggml_blocks
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError, printable


INDEX_NAME = "model.safetensors.index.json"

#: GGUF tensor types read as they are stored (the others are decoded to float32).
_GGUF_FLOATS = ("F32", "F16", "BF16")


#: JSON side files larger than this are not real configs or indexes.
_MAX_JSON = 64 * 1024 * 1024


def plain_name(name, what):
    """``name`` when it is a plain file name (no directory part, not ``.``/``..``, no
    control character), else ``InputError``: a name read from a file never leads a
    read or a write outside its folder."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise InputError(f"{what} names {printable(name)}, which is not a plain file name inside the folder")
    return name


def _is_file(folder, name):
    """A regular file (or a symlink to one): FIFOs and devices are never opened."""
    return os.path.isfile(os.path.join(folder, name))


def read_json(path, what):
    """A JSON side file of the source: bounded in size and nesting, one clear error."""
    try:
        if os.path.getsize(path) > _MAX_JSON:
            raise InputError(f"{path}: too large for a {what} ({os.path.getsize(path)} bytes)")
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise InputError(f"{path}: not a valid {what} ({reason})") from None


def _gguf_row_shape(info):
    """A GGUF tensor's bytes as rows: ``(*shape[:-1], bytes per row)`` (the scan checked
    that the rows are whole blocks and that the bytes lie in the file)."""
    if not info.shape:
        return (info.nbytes,)
    rows = math.prod(info.shape[:-1])
    return (*info.shape[:-1], info.nbytes // rows if rows else 0)


class Source:
    """A checkpoint opened for streaming.

    Attributes
    ----------
    kind : {"safetensors", "gguf"}
    path : str
        The folder or file given.
    config : dict or None
        ``config.json`` of a folder source.
    shards : list of (str, list of TensorInfo)
        Shard file name (relative) and its tensors in file order. A GGUF source is one
        shard named after the file.
    index : dict or None
        The parsed shard index of a folder with several shards.
    folder : str or None
        The folder holding ``config.json`` and tokenizer files, if any.
    gguf : gguf_check.GgufHeader or None
        What a GGUF source's header declares (metadata records, tensors, alignment).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.config = None
        self.index = None
        self.folder = None
        self.gguf = None
        if not os.path.exists(self.path):
            raise InputError(f"source {self.path!r} does not exist")
        if not (os.path.isdir(self.path) or os.path.isfile(self.path)):
            raise InputError(f"source {self.path!r} is neither a folder nor a regular file")
        if os.path.isdir(self.path):
            self.kind = "safetensors"
            self.folder = self.path
            self._open_folder()
        elif self.path.endswith(".gguf"):
            self.kind = "gguf"
            self._open_gguf()
        else:
            self.kind = "safetensors"
            try:
                tensors, self.metadata = st.read_header(self.path)
            except st.FormatError as exc:
                raise InputError(str(exc)) from None
            self.shards = [(os.path.basename(self.path), list(tensors.values()))]

    # -- opening ------------------------------------------------------------------
    def _open_folder(self):
        config_path = os.path.join(self.path, "config.json")
        if _is_file(self.path, "config.json"):
            self.config = read_json(config_path, "config.json")
            if not isinstance(self.config, dict):
                raise InputError(f"{config_path}: expected a JSON object, got {type(self.config).__name__}")
        index_path = os.path.join(self.path, INDEX_NAME)
        weight_map = None
        if _is_file(self.path, INDEX_NAME):
            self.index = read_json(index_path, "safetensors index")
            weight_map = self.index.get("weight_map") if isinstance(self.index, dict) else None
            if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise InputError(f"{index_path}: not a safetensors index (its weight_map must be an object "
                                 "of tensor name -> shard file name)")
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors") and _is_file(self.path, f))
        if not files:
            raise InputError(f"source folder {self.path!r} holds no *.safetensors file")
        self.shards = []
        seen = {}
        for name in files:
            plain_name(name, index_path)
            file_path = os.path.join(self.path, name)
            if not os.path.exists(file_path):
                raise InputError(f"{index_path}: lists shard {printable(name)}, which is missing")
            if not os.path.isfile(file_path):
                raise InputError(f"{printable(file_path)} is not a regular file")
            try:
                tensors, _ = st.read_header(file_path)
            except st.FormatError as exc:
                raise InputError(str(exc)) from None
            for tname in tensors:
                if tname in seen:
                    raise InputError(f"tensor {printable(tname)} is in both {printable(seen[tname])} and {printable(name)}")
                seen[tname] = name
            self.shards.append((name, list(tensors.values())))
        if weight_map is not None:
            for tname, shard in weight_map.items():
                if seen.get(tname) != shard:
                    raise InputError(f"{index_path}: maps {printable(tname)} to {printable(shard)}, "
                                     "but that shard does not hold it")

    def _open_gguf(self):
        from nbwoq.formats import gguf_check

        # Our own bounded scan: every count and length is checked against the file, and
        # the tensor list and metadata records come from it (no gguf-py reader, which
        # parses a whole tokenizer item by item).
        header = gguf_check.scan(self.path)
        if header.byte_order != "<":
            raise InputError(f"{self.path}: a big-endian GGUF file; nbwoq reads little-endian GGUF files only")
        self.gguf = header
        infos = [st.TensorInfo(t.name, self.path, t.type_name, tuple(reversed(t.dims)), t.start, t.stop)
                 for t in header.tensors]
        self.shards = [(os.path.basename(self.path), infos)]

    # -- reading ------------------------------------------------------------------
    def tensors(self):
        for shard, infos in self.shards:
            for info in infos:
                yield shard, info

    @contextlib.contextmanager
    def open(self, info):
        """Yield ``(array, dtype_name)``: the tensor's stored values, read-only.

        Safetensors and GGUF bfloat16 come as the uint16 pattern with dtype name
        ``"BF16"``. A quantized GGUF tensor comes dequantized to float32 (``"F32"``).
        """
        if self.kind == "gguf" and info.dtype not in _GGUF_FLOATS:
            mapping = st.TensorMap(info, np.uint8, _gguf_row_shape(info))
            try:
                yield self._gguf_decode(info, mapping.array), "F32"
            finally:
                mapping.close()
            return
        mapping = st.TensorMap(info)
        try:
            yield mapping.array, info.dtype
        finally:
            mapping.close()

    @contextlib.contextmanager
    def open_bytes(self, start, stop):
        """Yield the file's bytes ``[start, stop)`` (a single-file source, a range its
        header declared) as a read-only uint8 array, memory-mapped for the block only."""
        mapping = st.TensorMap(st.TensorInfo("", self.path, "U8", (stop - start,), start, stop))
        try:
            yield mapping.array
        finally:
            mapping.close()

    def read_chunks(self, info, buffer):
        """The stored bytes of tensor ``info``, read from the file into ``buffer`` (a
        writable bytearray or uint8 array) and yielded as memoryviews of it, in order:
        a copy streams them without mapping the tensor. Each view is valid until the
        next. ``InputError`` when the file holds fewer bytes than its header said."""
        view = memoryview(buffer).cast("B")
        with open(info.path, "rb", buffering=0) as f:
            f.seek(info.start)
            left = info.nbytes
            while left:
                n = f.readinto(view[:min(left, len(view))])
                if not n:
                    raise InputError(f"{info.path}: changed while it was read (tensor {printable(info.name)} "
                                     f"ends {left} bytes early)")
                left -= n
                yield view[:n]

    def gguf_raw(self, info):
        """The stored bytes of GGUF tensor ``info`` as read-only uint8 rows
        ``(*shape[:-1], bytes per row)``, and its GGML type name: what a copy writes.
        The map of those bytes goes when the array does."""
        return st.TensorMap(info, np.uint8, _gguf_row_shape(info)).array, info.dtype

    def gguf_records(self):
        """The source's metadata records as stored (key, type and value bytes), by key
        in file order, read with one bounded read of the metadata section."""
        keys = self.gguf.keys
        if not keys:
            return {}
        first = min(k.start for k in keys.values())
        last = max(k.stop for k in keys.values())
        with open(self.path, "rb") as f:
            f.seek(first)
            raw = f.read(last - first)
        if len(raw) != last - first:
            raise InputError(f"{self.path}: changed while it was read (its metadata section is shorter now)")
        return {name: raw[k.start - first:k.stop - first] for name, k in keys.items()}

    def _gguf_decode(self, info, raw):
        """float32 values of a block-quantized GGUF tensor from its uint8 rows ``raw``."""
        name = info.dtype
        if info.size == 0:
            return np.zeros(info.shape, dtype=np.float32)
        if name in ggml_blocks.SUPPORTED and info.shape:
            # our parallel decoders (llama.cpp's dequantize_row_*)
            return ggml_blocks.decode_rows(raw.reshape(-1, raw.shape[-1]), name, info.shape[-1]).reshape(info.shape)
        import gguf  # its NumPy dequantizers, for the types ours do not decode

        try:
            values = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name])
        except NotImplementedError:
            raise InputError(f"{self.path}: tensor {printable(info.name)} has GGUF type {name}, "
                             "which nbwoq cannot decode") from None
        return np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape)

    def fingerprint(self):
        """File names, sizes and modification times: a resumed run must see the same source."""
        files = [os.path.join(self.path, s) if self.folder else self.path for s, _ in self.shards]
        return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
