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
import mmap
import os
import struct
import zlib

import numpy as np

from nbwoq.formats import storage

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
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        return f"TensorInfo({self.name!r}, {self.dtype}, {self.shape})"


def read_header(path):
    """Parse and check the header of ``path``.

    Returns
    -------
    tensors : dict of str -> TensorInfo
        In file order (by data offset).
    metadata : dict of str -> str

    Raises
    ------
    FormatError
        Naming the file and what is wrong: too short, header length beyond the file,
        invalid JSON, unknown dtype, shape/size mismatch, data beyond the end of the
        file (truncated), overlapping tensors.
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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: corrupt safetensors header (not valid JSON: {exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: corrupt safetensors header (expected a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: corrupt safetensors header (__metadata__ must be an object)")
    base = 8 + n
    tensors = []
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: corrupt entry for tensor {name!r} (needs dtype, shape, data_offsets)") from None
        if dtype not in DTYPES:
            raise FormatError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise FormatError(f"{path}: tensor {name!r} has a negative shape or byte range")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise FormatError(
                f"{path}: tensor {name!r} shape {list(shape)} x {dtype} needs {expected} bytes, "
                f"header gives {end - begin}"
            )
        if base + end > size:
            raise FormatError(
                f"{path}: truncated: tensor {name!r} ends at byte {base + end}, file has {size} bytes"
            )
        tensors.append(TensorInfo(name, path, dtype, shape, base + begin, base + end))
    tensors.sort(key=lambda t: t.start)
    for a, b in zip(tensors, tensors[1:]):
        if b.start < a.stop:
            raise FormatError(f"{path}: tensors {a.name!r} and {b.name!r} overlap")
    return {t.name: t for t in tensors}, {str(k): str(v) for k, v in metadata.items()}


class TensorMap:
    """One tensor's bytes, memory-mapped read-only; ``close`` releases the pages.

    Use as a context manager; ``array`` is valid inside it only.
    """

    def __init__(self, info):
        page = mmap.ALLOCATIONGRANULARITY
        offset = info.start - info.start % page
        length = info.stop - offset
        self._map = None
        if info.nbytes == 0:
            self.array = np.zeros(info.shape, dtype=DTYPES[info.dtype])
            return
        with open(info.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset)
        if hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._map.madvise(mmap.MADV_WILLNEED)
        dtype = DTYPES[info.dtype]
        self.array = np.frombuffer(self._map, dtype=dtype, count=info.size, offset=info.start - offset).reshape(info.shape)

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
            raise RuntimeError(f"{self.path}: tensor {name!r} is beyond the planned header")
        planned, expected = self._plan[self._next]
        if name != planned or nbytes != expected:
            raise RuntimeError(
                f"{self.path}: expected tensor {planned!r} ({expected} bytes), got {name!r} ({nbytes} bytes)"
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
