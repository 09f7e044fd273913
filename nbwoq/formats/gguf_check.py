"""A GGUF file's header, checked with Python integers: what nbwoq reads a GGUF source by.

gguf-py's ``GGUFReader`` trusts the file: it loops over every declared metadata item and
tensor, building NumPy views as it goes, so a 94-byte file declaring 2**62 array items
or a 2**60-byte string makes it loop (or allocate) without end, and a wrapped uint64
shape product passes its size arithmetic. ``scan`` walks the same layout first, with
``struct`` and Python integers over a read-only map of the file, and checks every count
and length against the bytes left in the file before it loops or reads, as llama.cpp's
loader does. nbwoq reads a GGUF source through this scan alone (``Source`` maps each
tensor's checked byte range); gguf-py's reader is never handed a source file.

Layout (gguf-py's ``gguf_reader.py``; all integers little-endian, or big-endian in a
file whose version reads byte-swapped):

- ``b"GGUF"``, version (u32: 2 or 3), tensor count (u64), metadata count (u64);
- per metadata entry: key (string), value type (u32), value; a string is a u64 length
  and that many UTF-8 bytes; an array is an item type (u32), a count (u64) and the items;
- per tensor: name (string), n_dims (u32), n_dims dimensions (u64, innermost first),
  ggml type (u32), offset (u64) from the start of the data;
- padding to ``general.alignment`` (u32, a power of two; default 32), then the data.

``scan`` also returns where each metadata record lies in the file, so a GGUF -> GGUF
run copies the records byte for byte (``gguf_header``) instead of decoding and
re-encoding a tokenizer of tens of thousands of strings.
"""

import math
import mmap
import os
import struct
from typing import NamedTuple

import numpy as np

from nbwoq.formats.errors import InputError, printable

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: ggml's GGML_MAX_DIMS: a tensor has at most this many dimensions.
MAX_DIMS = 4
STRING, ARRAY = 8, 9
#: Fixed-size GGUF value types -> (name, struct code). STRING and ARRAY are variable.
SCALARS = {0: ("UINT8", "B"), 1: ("INT8", "b"), 2: ("UINT16", "H"), 3: ("INT16", "h"), 4: ("UINT32", "I"),
           5: ("INT32", "i"), 6: ("FLOAT32", "f"), 7: ("BOOL", "?"), 10: ("UINT64", "Q"), 11: ("INT64", "q"),
           12: ("FLOAT64", "d")}
UINT32 = 4
# Smallest encodings, for bounding a declared count by the bytes left before looping:
# a metadata entry is an empty key (8), a type (4) and a one-byte value; a tensor info
# an empty name (8), n_dims (4), no dimension, a type (4) and an offset (8).
_MIN_KV, _MIN_TENSOR = 8 + 4 + 1, 8 + 4 + 4 + 8
#: Most metadata array items read in all. gguf-py holds several NumPy views per item
#: (about 700 bytes and 30 us each), so a file of a few megabytes of one-byte items
#: would take it gigabytes and minutes; the largest tokenizers hold under a million.
MAX_ARRAY_ITEMS = 1 << 21
#: Most tensors read (gguf-py builds several views per tensor; real models have thousands).
MAX_TENSORS = 1 << 18
#: Bytes of metadata strings checked as UTF-8 in one decode.
_UTF8_RUN = 1 << 24

#: ggml tensor types: id -> (name, values per block, bytes per block), gguf-py's
#: ``GGMLQuantizationType`` and ``GGML_QUANT_SIZES`` (0.19; a test holds them equal to the
#: installed gguf-py). A GGUF run reads its source without importing gguf-py (a tenth of
#: a second); a type missing here is looked up there (``ggml_type``).
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
_TYPE_IDS = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}
#: ``general.quantization_version`` of the blocks nbwoq writes (gguf-py's ``GGML_QUANT_VERSION``).
QUANT_VERSION = 2


def ggml_type(type_id):
    """``(name, values per block, bytes per block)`` of ggml type ``type_id``, or None."""
    known = GGML_TYPES.get(type_id)
    if known is None:
        try:
            import gguf

            gtype = gguf.GGMLQuantizationType(type_id)
            known = (gtype.name, *gguf.GGML_QUANT_SIZES[gtype])
        except (ImportError, ValueError, KeyError):
            return None
    return known


def ggml_type_id(name):
    """The id of the ggml type named ``name`` (``KeyError`` when neither table has it)."""
    if name in _TYPE_IDS:
        return _TYPE_IDS[name]
    import gguf

    return int(gguf.GGMLQuantizationType[name])


class GgufTensor(NamedTuple):
    """One tensor as the header declares it: absolute byte range ``[start, stop)``."""

    name: str
    type_name: str
    dims: tuple  # innermost first, as stored
    start: int
    stop: int


class GgufKey(NamedTuple):
    """One metadata record: its value type, its value (a scalar or string; None for an
    array) and the absolute byte range ``[start, stop)`` of the whole record, key included."""

    name: str
    vtype: int
    value: object
    start: int
    stop: int


class GgufHeader(NamedTuple):
    version: int
    alignment: int
    data_start: int
    architecture: str
    tensors: list
    keys: dict  # name -> GgufKey, in file order
    byte_order: str  # "<", or ">" for a file written byte-swapped


class _Reader:
    """Python-int cursor over the mapped file; every read is bounded by its size."""

    def __init__(self, path, buf, order):
        self.path, self.buf, self.order, self.pos, self.size = path, buf, order, 0, len(buf)

    def fail(self, what):
        raise InputError(f"{self.path}: not a readable GGUF file: {what}")

    def need(self, n, what):
        if n > self.size - self.pos:
            self.fail(f"{what} needs {n} bytes at byte {self.pos}; the file has {self.size - self.pos} left")

    def unpack(self, code, what):
        fmt = self.order + code
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def raw_string(self, what):
        n = self.unpack("Q", f"the length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        start = self.pos
        self.pos += n
        return start, n

    def string(self, what):
        start, n = self.raw_string(what)
        raw = bytes(self.buf[start:start + n])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} {printable(raw)} is not valid UTF-8")


    def strings(self, count, key):
        """Skip ``count`` strings (a tokenizer's vocabulary: keep it tight), checking each
        length against the file and each string's UTF-8.

        The loop only reads the lengths; the strings are checked by decoding runs of them
        at once (about ``_UTF8_RUN`` bytes each) with every length field zeroed. That is
        exact: a NUL is a whole character and never continues one, so a run decodes
        exactly when each of its strings does. Only a run that fails is walked again,
        string by string, to name the first bad item."""
        length = struct.Struct(self.order + "Q").unpack_from
        buf, pos, size = self.buf, self.pos, self.size
        run_start, run_item, fields = pos, 0, []
        for i in range(count):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"the length of item {i} of {printable(key)}")
            (n,) = length(buf, pos)
            fields.append(pos)
            pos += 8
            if n > size - pos:
                self.pos = pos
                self.need(n, f"item {i} of {printable(key)} ({n} bytes)")
            pos += n
            if pos - run_start >= _UTF8_RUN:
                self._check_run(run_start, pos, fields, run_item, key)
                run_start, run_item, fields = pos, i + 1, []
        self._check_run(run_start, pos, fields, run_item, key)
        self.pos = pos

    def _check_run(self, start, stop, fields, first_item, key):
        """Check the strings of bytes ``[start, stop)``, whose length fields start at ``fields``."""
        if not fields:
            return
        run = np.frombuffer(self.buf, dtype=np.uint8, count=stop - start, offset=start).copy()
        at = np.asarray(fields, dtype=np.int64) - start
        for k in range(8):
            run[at + k] = 0
        try:
            str(run.data, "utf-8")
        except UnicodeDecodeError:
            self._first_bad_string(start, len(fields), first_item, key)

    def _first_bad_string(self, pos, count, first_item, key):
        length = struct.Struct(self.order + "Q").unpack_from
        for i in range(first_item, first_item + count):
            (n,) = length(self.buf, pos)
            pos += 8
            try:
                str(self.buf[pos:pos + n], "utf-8")
            except UnicodeDecodeError:
                self.fail(f"item {i} of {printable(key)}, {printable(self.buf[pos:pos + n])}, is not valid UTF-8")
            pos += n


def scan(path):
    """Check the header of the GGUF file ``path`` and return what it declares.

    Returns
    -------
    GgufHeader
        version, alignment, absolute data start, ``general.architecture``, the
        tensors (``GgufTensor``, in header order), the metadata records (``GgufKey``
        by name, in file order) and the byte order (``"<"`` or ``">"``).

    Raises
    ------
    InputError
        One line naming the file and the first thing wrong: bad magic or version, a
        count or length beyond what the file holds (checked before any loop), a key,
        string or tensor name that is not UTF-8, a duplicate key or tensor name, an
        unknown value or tensor type, a nested array, an alignment larger than the
        file, more than ``MAX_DIMS``
        dimensions, a shape whose size overflows or is not whole blocks, tensor data
        outside the file, misaligned or overlapping, or no ``general.architecture``.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 24:
        raise InputError(f"{path}: not a readable GGUF file: {size} bytes, shorter than the 24-byte GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _scan(_Reader(path, buf, "<"))


def _scan(r):
    if bytes(r.buf[:4]) != MAGIC:
        r.fail(f"bad magic {printable(bytes(r.buf[:4]))} (a GGUF file starts with b'GGUF')")
    r.pos = 4
    version = struct.unpack_from("<I", r.buf, 4)[0]
    if version & 0xFFFF == 0:  # written on a machine of the other byte order (as gguf-py reads it)
        r.order = ">"
    version = r.unpack("I", "the version")
    if version not in VERSIONS:
        r.fail(f"version {version}; readable versions are {', '.join(map(str, VERSIONS))}")
    n_tensors = r.unpack("Q", "the tensor count")
    n_kv = r.unpack("Q", "the metadata count")
    if n_kv > (r.size - r.pos) // _MIN_KV:
        r.fail(f"{n_kv} metadata entries declared; the {r.size}-byte file has room for at most "
               f"{(r.size - r.pos) // _MIN_KV}")
    keys = {}
    items = 0
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        record_start = r.pos
        key = r.string("a metadata key")
        if key in keys:
            r.fail(f"metadata key {printable(key)} appears twice")
        vtype = r.unpack("I", f"the type of {printable(key)}")
        value = None
        if vtype in SCALARS:
            value = r.unpack(SCALARS[vtype][1], f"the value of {printable(key)}")
        elif vtype == STRING:
            value = r.string(f"the value of {printable(key)}")
        elif vtype == ARRAY:
            itype = r.unpack("I", f"the item type of {printable(key)}")
            count = r.unpack("Q", f"the item count of {printable(key)}")
            if itype in SCALARS:
                width = struct.calcsize(r.order + SCALARS[itype][1])
            elif itype == STRING:
                width = 8  # at least its length
            else:
                r.fail(f"metadata key {printable(key)} is an array of type {itype}"
                       f"{' (nested arrays are not read)' if itype == ARRAY else ''}")
            if count > (r.size - r.pos) // width:
                r.fail(f"metadata key {printable(key)} declares {count} items of at least {width} bytes; "
                       f"the file has {r.size - r.pos} bytes left")
            items += count
            if items > MAX_ARRAY_ITEMS:
                r.fail(f"metadata arrays hold more than {MAX_ARRAY_ITEMS} items in all (at {printable(key)})")
            if itype == STRING:
                r.strings(count, key)
            else:
                r.pos += count * width
        else:
            r.fail(f"metadata key {printable(key)} has unknown value type {vtype}")
        keys[key] = GgufKey(key, vtype, value, record_start, r.pos)
    if "general.alignment" in keys:
        _, vtype, alignment, _, _ = keys["general.alignment"]
        if vtype != UINT32 or alignment == 0 or alignment & (alignment - 1):
            r.fail(f"general.alignment must be a power of two of type UINT32, got {alignment!r} (type {vtype})")
        if alignment > r.size:  # a copy pads its header and each tensor to it: keep that bounded by the file
            r.fail(f"general.alignment {alignment} is larger than the whole file ({r.size} bytes)")
    arch = keys.get("general.architecture")
    if arch is None or arch.vtype != STRING:
        r.fail("no general.architecture (a string naming the model's architecture) in its metadata")
    if n_tensors > min(MAX_TENSORS, (r.size - r.pos) // _MIN_TENSOR):
        r.fail(f"{n_tensors} tensors declared; the {r.size}-byte file has room for at most "
               f"{(r.size - r.pos) // _MIN_TENSOR} (and at most {MAX_TENSORS} are read)")
    declared = []
    names = set()
    for _ in range(n_tensors):
        name = r.string("a tensor name")
        shown = printable(name)
        if name in names:
            r.fail(f"tensor {shown} appears twice")
        names.add(name)
        n_dims = r.unpack("I", f"the dimension count of {shown}")
        if n_dims > MAX_DIMS:
            r.fail(f"tensor {shown} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")
        dims = tuple(r.unpack("Q", f"a dimension of {shown}") for _ in range(n_dims))
        raw_type = r.unpack("I", f"the type of {shown}")
        offset = r.unpack("Q", f"the data offset of {shown}")
        known = ggml_type(raw_type)
        if known is None:
            r.fail(f"tensor {shown} has unknown ggml type {raw_type}")
        type_name, block, type_size = known
        n = math.prod(dims)  # Python ints: no uint64 wrap-around
        if any(d >= 1 << 63 for d in dims) or n >= 1 << 63:
            r.fail(f"tensor {shown} has shape {list(dims)}, beyond int64")
        if block > 1 and (not dims or dims[0] % block):
            r.fail(f"tensor {shown} of type {type_name} has shape {list(dims)}: rows are not whole blocks of {block}")
        declared.append((name, type_name, dims, offset, n // block * type_size))
    data_start = r.pos + (-r.pos % alignment)
    tensors = []
    for name, type_name, dims, offset, nbytes in declared:
        if offset % alignment:
            r.fail(f"tensor {printable(name)} starts at data offset {offset}, not a multiple of the alignment {alignment}")
        start = data_start + offset
        if start + nbytes > r.size:
            r.fail(f"truncated: tensor {printable(name)} ends at byte {start + nbytes}, file has {r.size} bytes")
        tensors.append(GgufTensor(name, type_name, dims, start, start + nbytes))
    by_start = sorted(tensors, key=lambda t: t.start)
    for a, b in zip(by_start, by_start[1:]):
        if b.start < a.stop:
            r.fail(f"tensors {printable(a.name)} and {printable(b.name)} overlap")
    return GgufHeader(version, alignment, data_start, arch.value, tensors, keys, r.order)
