"""Checkpoint sources: a Hugging Face folder, one safetensors file, or a GGUF file.

Every header is read and checked when the source is opened, before anything is
written, so a truncated shard or a broken index fails the run up front. Tensor data is
read later, one tensor at a time (``Source.open``), from a memory map of just that
tensor's bytes.
"""

import contextlib
import json
import os

import numpy as np

from nbwoq.formats import ggml_blocks
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError, printable


INDEX_NAME = "model.safetensors.index.json"


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
        try:
            import gguf
        except ImportError:  # pragma: no cover - gguf is a dependency of the CLI
            raise InputError("reading a GGUF source needs the 'gguf' package (pip install gguf)") from None
        from nbwoq.formats import gguf_check
        from nbwoq.formats.errors import printable

        # gguf-py trusts every count and length in the file; ours are checked first.
        header = gguf_check.scan(self.path)
        try:
            reader = gguf.GGUFReader(self.path, "r")
        except Exception as exc:  # gguf-py raises ValueError/struct errors/IndexError on bad files
            raise InputError(f"{self.path}: not a readable GGUF file ({type(exc).__name__}: "
                             f"{printable(str(exc))[1:-1]})") from None
        self.gguf = reader
        read = [(t.name, int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors]
        if read != [(t.name, t.start, t.stop) for t in header.tensors]:  # two readers of one layout disagree
            raise InputError(f"{self.path}: not a readable GGUF file (gguf-py reads its tensors differently)")
        infos = [st.TensorInfo(t.name, self.path, t.type_name, tuple(reversed(t.dims)), t.start, t.stop)
                 for t in header.tensors]
        self._gguf_by_name = {t.name: t for t in reader.tensors}
        self.shards = [(os.path.basename(self.path), infos)]

    # -- reading ------------------------------------------------------------------
    def tensors(self):
        for shard, infos in self.shards:
            for info in infos:
                yield shard, info

    @contextlib.contextmanager
    def open(self, info):
        """Yield ``(array, dtype_name)``: the tensor's stored values, read-only.

        Safetensors bfloat16 comes as its uint16 pattern with dtype name ``"BF16"``. A
        quantized GGUF tensor comes dequantized to float32 (``"F32"``), by gguf-py.
        """
        if self.kind == "gguf":
            try:
                yield self._gguf_array(info)
            finally:
                self._gguf_release(info)
            return
        mapping = st.TensorMap(info)
        try:
            yield mapping.array, info.dtype
        finally:
            mapping.close()

    def _gguf_release(self, info):
        """Drop this tensor's pages from the reader's whole-file map (they stay in the page
        cache), so resident memory follows the current tensor here too."""
        import mmap

        mm = getattr(self.gguf.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        start = info.start - info.start % page
        length = min(info.stop, len(mm)) - start
        if length > 0:
            try:
                mm.madvise(mmap.MADV_DONTNEED, start, length)
            except (OSError, ValueError):
                pass

    def gguf_raw(self, info):
        """The stored bytes/values of a GGUF tensor as gguf-py exposes them, and its type."""
        t = self._gguf_by_name[info.name]
        return t.data, t.tensor_type

    def _gguf_array(self, info):
        import gguf

        data, qtype = self.gguf_raw(info)
        name = qtype.name
        if name in ("F32", "F16"):
            return np.asarray(data).reshape(info.shape), name
        if name == "BF16":
            return np.asarray(data).view(np.uint16).reshape(info.shape), "BF16"
        if name in ggml_blocks.SUPPORTED and info.shape:
            # our parallel decoders (llama.cpp's dequantize_row_*), not gguf-py's NumPy ones
            cols = info.shape[-1]
            raw = np.ascontiguousarray(np.asarray(data).reshape(-1, ggml_blocks.row_bytes(name, cols)))
            return ggml_blocks.decode_rows(raw, name, cols).reshape(info.shape), "F32"
        try:
            values = gguf.quants.dequantize(data, qtype)
        except NotImplementedError:
            raise InputError(f"{self.path}: tensor {printable(info.name)} has GGUF type {name}, which gguf-py cannot decode") from None
        return np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape), "F32"

    def fingerprint(self):
        """File names, sizes and modification times: a resumed run must see the same source."""
        files = [os.path.join(self.path, s) if self.folder else self.path for s, _ in self.shards]
        return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
