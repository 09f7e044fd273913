"""Safetensors read one tensor at a time, and written as a stream. No torch.

The file format is small enough to own: eight bytes of little-endian header length, a
JSON header naming every tensor's dtype, shape and byte range, then the data. Reading
it ourselves lets us (a) map exactly one tensor's bytes at a time, so resident memory
follows the current tensor and not the file, (b) hand bfloat16 over as its 16-bit
pattern without ml_dtypes or torch, and (c) say precisely what is wrong with a broken
file before anything is written.

Writing plans the whole header first (every output size is known from the shapes), so
tensors stream to disk in order and are never held together in memory.
"""

import json
import math
import mmap
import os
import re
import struct
import zlib

import numpy as np

from nbwoq.formats import storage
from nbwoq.formats.errors import printable

#: Safetensors dtype name -> NumPy dtype its bytes are read as (``storage`` holds the table).
DTYPES = storage.DTYPES

# A header larger than this is not a real checkpoint (the safetensors library caps it
# at 100 MB too); refusing it early keeps a corrupt length from allocating gigabytes.
_MAX_HEADER = 100 * 1024 * 1024
_ALIGN = 8


class FormatError(ValueError):
    """A file is not what it claims to be (truncated, corrupt, inconsistent)."""


class TensorInfo:
    """Where one tensor lives: file, dtype name, shape and absolute byte range."""

    __slots__ = ("name", "path", "dtype", "shape", "start", "stop")

    def __init__(self, name, path, dtype, shape, start, stop):
        self.name, self.path, self.dtype, self.shape, self.start, self.stop = name, path, dtype, shape, start, stop

    @property
    def nbytes(self):
        return self.stop - self.start

    @property
    def size(self):
        return math.prod(self.shape)

    def __repr__(self):
        return f"TensorInfo({self.name!r}, {self.dtype}, {self.shape})"


def _is_int(value):
    """A JSON integer: ``int`` but not ``bool`` (``true`` is not a dimension)."""
    return isinstance(value, int) and not isinstance(value, bool)


# Strings (with their escapes) removed before the brackets are counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Deepest nesting a header may have: a real one has 3 (header, entry, shape).
MAX_JSON_DEPTH = 64


class _DuplicateKey(Exception):
    def __init__(self, key):
        self.key = key


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _json_depth(raw):
    """Deepest bracket nesting of the JSON text ``raw`` (bytes), in C-speed passes and
    bounded memory, so a hostile 100 MB header of ``[`` is measured, not recursed into."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    depth = deepest = 0
    chunk = 1 << 20
    for i in range(0, brackets.size, chunk):
        part = brackets[i:i + chunk]
        steps = np.where((part == ord("[")) | (part == ord("{")), 1, -1).astype(np.int32)
        running = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


def strict_json(raw, what):
    """Parse the JSON ``raw`` (bytes or str) read from a file, refusing what the
    safetensors library refuses: text that is not UTF-8, a key given twice in one object
    (``json.loads`` would silently keep the last), nesting deeper than
    ``MAX_JSON_DEPTH`` (``json.loads`` would raise ``RecursionError``), and numbers
    Python will not parse. Raises ``FormatError`` starting with ``what``."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(f"{what} is not valid UTF-8 (a lone surrogate)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise FormatError(f"{what} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are read")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise FormatError(f"{what} gives key {printable(exc.key)} twice") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits, say
        raise FormatError(f"{what} is not valid JSON ({exc})") from None


def _utf8_name(name):
    """True when ``name`` can be written back as UTF-8 (a ``\\ud800`` escape cannot)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_header(path):
    """Parse and check the header of ``path``.

    Every size in the header is untrusted: dimensions and offsets must be JSON integers,
    shape products are computed with Python integers (no int64 wrap-around), and every
    byte range must lie inside the file before anything is mapped or allocated.

    Returns
    -------
    tensors : dict of str -> TensorInfo
        In file order (by data offset).
    metadata : dict of str -> str

    Raises
    ------
    FormatError
        Naming the file and what is wrong: too short, header length beyond the file,
        a header that is not UTF-8 or not valid JSON (or nests too deep, or repeats a
        key), a ``__metadata__`` that is not an object of strings, an entry without
        dtype, integer shape and two integer data offsets, unknown dtype, shape/size
        mismatch, data beyond the end of the file (truncated), overlapping tensors.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise FormatError(
                f"{path}: truncated or corrupt safetensors header (header claims {n} bytes, file has {size})"
            )
        raw = f.read(n)
    header = strict_json(raw, f"{path}: corrupt safetensors header:")
    if not isinstance(header, dict):
        raise FormatError(f"{path}: corrupt safetensors header (expected a JSON object)")
    # The safetensors library reads __metadata__ as a map of strings to strings (or null).
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: corrupt safetensors header (__metadata__ must be an object of strings)")
    if not all(_utf8_name(k) and _utf8_name(v) for k, v in metadata.items()):
        raise FormatError(f"{path}: corrupt safetensors header (__metadata__ is not valid UTF-8)")
    base = 8 + n
    tensors = []
    for name, entry in header.items():
        if not _utf8_name(name):
            raise FormatError(f"{path}: tensor name {printable(name)} is not valid UTF-8")
        shown = printable(name)
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
            raise FormatError(f"{path}: corrupt entry for tensor {shown} (needs dtype, shape, data_offsets)")
        if not all(_is_int(d) for d in shape):
            raise FormatError(f"{path}: tensor {shown} has shape {shape!r}; dimensions must be integers")
        if len(offsets) != 2 or not all(_is_int(v) for v in offsets):
            raise FormatError(f"{path}: tensor {shown} has data_offsets {offsets!r}; two integers expected")
        if dtype not in DTYPES:
            raise FormatError(f"{path}: tensor {shown} has unsupported dtype {printable(dtype)}; known: {', '.join(DTYPES)}")
        begin, end = offsets
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise FormatError(f"{path}: tensor {shown} has a negative shape or byte range")
        if base + end > size:
            raise FormatError(
                f"{path}: truncated: tensor {shown} ends at byte {base + end}, file has {size} bytes"
            )
        itemsize = DTYPES[dtype].itemsize
        expected = math.prod(shape) * itemsize  # Python ints: no wrap-around
        if end - begin != expected:
            raise FormatError(
                f"{path}: tensor {shown} shape {shape} x {dtype} needs {expected} bytes, "
                f"header gives {end - begin}"
            )
        if math.prod(d for d in shape if d) * itemsize >= 1 << 63:  # an empty one NumPy cannot shape
            raise FormatError(f"{path}: tensor {shown} has shape {shape}, too large for an array")
        tensors.append(TensorInfo(name, path, dtype, tuple(shape), base + begin, base + end))
    tensors.sort(key=lambda t: t.start)
    for a, b in zip(tensors, tensors[1:]):
        if b.start < a.stop:
            raise FormatError(f"{path}: tensors {printable(a.name)} and {printable(b.name)} overlap")
    return {t.name: t for t in tensors}, dict(metadata)


class TensorMap:
    """One tensor's bytes, memory-mapped read-only; ``close`` releases the pages.

    Use as a context manager; ``array`` is valid inside it only. ``dtype`` and ``shape``
    (default: the tensor's own) view the same bytes otherwise, such as a GGUF tensor's
    blocks as uint8 rows.
    """

    def __init__(self, info, dtype=None, shape=None):
        page = mmap.ALLOCATIONGRANULARITY
        offset = info.start - info.start % page
        length = info.stop - offset
        dtype = DTYPES[info.dtype] if dtype is None else np.dtype(dtype)
        shape = info.shape if shape is None else shape
        self._map = None
        if info.nbytes == 0:
            self.array = np.zeros(shape, dtype=dtype)
            return
        with open(info.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset)
        if hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._map.madvise(mmap.MADV_WILLNEED)
        count = math.prod(shape)
        self.array = np.frombuffer(self._map, dtype=dtype, count=count, offset=info.start - offset).reshape(shape)

    def close(self):
        self.array = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view escaped: the pages go when it does
                pass
            self._map = None

    def __enter__(self):
        return self.array

    def __exit__(self, *exc):
        self.close()


def header_bytes(specs, metadata=None):
    """Serialized header for tensors ``specs`` = [(name, dtype_name, shape), ...] in order.

    Returns ``(bytes, [(name, start, stop), ...])`` with offsets relative to the data.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets = []
    pos = 0
    for name, dtype, shape in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape], "data_offsets": [pos, pos + nbytes]}
        offsets.append((name, pos, pos + nbytes))
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so the data starts 8-byte aligned (what the safetensors library writes).
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw, offsets


def _writeback_starter():
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` where libc has it, else None.

    It starts the disk write of a range without waiting for it, so the fsync that makes
    a finished shard durable finds most of the file already on disk instead of flushing
    all of it at the end.
    """
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return lambda fd, offset, n: fn(fd, offset, n, 2)  # 2: SYNC_FILE_RANGE_WRITE; a failure only loses the head start


_START_WRITEBACK = _writeback_starter()


_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_file(path):
    """A new file at ``path``, unbuffered: what stood there is unlinked first (a planted
    symlink goes, its target is never written) and the file is created exclusively."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    return os.fdopen(os.open(path, _CREATE, 0o644), "r+b", buffering=0)


def file_crc32(fd, start, nbytes, crc=0):
    """CRC-32 of ``nbytes`` bytes of open file ``fd`` from ``start``, continuing ``crc``."""
    while nbytes > 0:
        chunk = os.pread(fd, min(nbytes, 1 << 24), start)
        if not chunk:
            raise FormatError(f"file ended {nbytes} bytes early")
        crc = zlib.crc32(chunk, crc)
        start += len(chunk)
        nbytes -= len(chunk)
    return crc


class StreamWriter:
    """Write a safetensors file whose tensors arrive one at a time, in plan order.

    The header is written up front from ``specs``; each ``write(name, array)`` must
    come in that order with exactly the planned bytes. ``close`` checks that every
    tensor arrived and fsyncs. Nothing is renamed here: the caller owns atomicity.

    With ``background=True`` the bytes go to disk on a writer thread while the caller
    computes the next tensor. ``write`` then returns a ticket, and the array must stay
    unchanged until ``wait(ticket)`` returns (or ``close``). Writes keep their order; an
    error on the thread (a full disk, say) is raised by the next ``write``, ``wait`` or
    ``close``.
    """

    def __init__(self, path, specs, metadata=None, background=False):
        raw, offsets = header_bytes(specs, metadata)
        self._plan = [(name, stop - start) for name, start, stop in offsets]
        self._next = 0
        self.path = os.fspath(path)
        self._file = create_file(self.path)
        self._offset = 0
        #: CRC-32 of every byte written so far (of the whole file after ``close``).
        self.crc = 0
        self._pool = None
        self._pending = []  # futures of background writes, oldest first
        self._done = 0  # tickets known to be finished
        self._write_all(memoryview(raw))
        if background:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbwoq-writer")

    def _write_all(self, view):
        fd = self._file.fileno()
        start = self._offset
        self.crc = zlib.crc32(view, self.crc)
        while view.nbytes:
            n = os.write(fd, view)
            view = view[n:]
            self._offset += n
        if _START_WRITEBACK is not None and self._offset > start:
            _START_WRITEBACK(fd, start, self._offset - start)

    def _check_next(self, name, nbytes):
        if self._next >= len(self._plan):
            raise RuntimeError(f"{self.path}: tensor {printable(name)} is beyond the planned header")
        planned, expected = self._plan[self._next]
        if name != planned or nbytes != expected:
            raise RuntimeError(
                f"{self.path}: expected tensor {printable(planned)} ({expected} bytes), got {printable(name)} ({nbytes} bytes)"
            )

    def _submit(self, job, *args):
        self._next += 1
        if self._pool is None:
            job(*args)
            self._done = self._next
        else:
            self._reap()
            self._pending.append(self._pool.submit(job, *args))
        return self._next

    def write(self, name, array):
        """Append tensor ``name``; returns its ticket (see ``wait``)."""
        data = np.ascontiguousarray(array)
        self._check_next(name, data.nbytes)
        if data.dtype.byteorder == ">":  # safetensors is little-endian
            data = data.astype(data.dtype.newbyteorder("<"))
        return self._submit(self._write_all, memoryview(data.reshape(-1)).cast("B"))

    def copy_range(self, name, path, start, nbytes):
        """Append tensor ``name`` as the bytes ``[start, start + nbytes)`` of file ``path``,
        copied by the kernel (``copy_file_range``: no mapping, no user-space copy); returns
        its ticket."""
        self._check_next(name, nbytes)
        return self._submit(self._copy_all, os.fspath(path), start, nbytes)

    def _copy_all(self, path, start, nbytes):
        fd = self._file.fileno()
        first = self._offset
        with open(path, "rb", buffering=0) as src:
            offset, left = start, nbytes
            copy = getattr(os, "copy_file_range", None)
            while left:
                n = 0
                if copy is not None:
                    try:
                        n = copy(src.fileno(), fd, left, offset)
                    except OSError:  # not across these file systems: read and write instead
                        copy = None
                    if n == 0:  # some file systems copy nothing rather than fail
                        copy = None
                if copy is None:
                    n = os.write(fd, os.pread(src.fileno(), min(left, 1 << 26), offset))
                if n == 0:
                    raise FormatError(f"{path}: ended before byte {start + nbytes} (changed while being read?)")
                offset += n
                left -= n
                self._offset += n
        self.crc = file_crc32(fd, first, self._offset - first, self.crc)  # the bytes as they landed
        if _START_WRITEBACK is not None:
            _START_WRITEBACK(fd, first, self._offset - first)

    def _reap(self):
        """Drop finished writes from the queue, raising the first error among them."""
        while self._pending and self._pending[0].done():
            self._pending.pop(0).result()
            self._done += 1

    def wait(self, ticket):
        """Block until the write that returned ``ticket`` (and all before it) is on its way
        to disk, so its array may be reused."""
        while self._done < ticket and self._pending:
            self._pending.pop(0).result()
            self._done += 1

    def close(self):
        if self._file is None:
            return
        try:
            self.wait(self._next)
            if self._next != len(self._plan):
                missing = [name for name, _ in self._plan[self._next:]]
                raise RuntimeError(f"{self.path}: closed before tensors {missing[:3]} were written")
            os.fsync(self._file.fileno())
        except BaseException:
            for future in self._pending:  # a failed write: the ones queued behind it are moot
                future.cancel()
            raise
        finally:
            self._shutdown()

    def abort(self):
        """Stop without finishing (the caller removes the file); never raises."""
        if self._file is not None:
            for future in self._pending:
                future.cancel()
            self._shutdown()

    def _shutdown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a running write ends before the file is closed
            self._pool = None
        self._pending = []
        self._file.close()
        self._file = None


def save_file(path, tensors, metadata=None):
    """Write a dict of NumPy arrays (dtype names given as ``(name, dtype, array)`` tuples)."""
    specs = [(name, dtype, arr.shape) for name, dtype, arr in tensors]
    writer = StreamWriter(path, specs, metadata)
    try:
        for name, _, arr in tensors:
            writer.write(name, arr)
        writer.close()
    except BaseException:
        writer.abort()
        raise
