"""A GGUF (version 3) header, written with ``struct``: for GGUF -> GGUF runs.

A GGUF source's metadata records are copied as stored bytes (``Source.gguf_records``);
only the records nbwoq sets itself are encoded here. gguf-py's ``GGUFWriter`` would
decode and re-encode every token and merge of the tokenizer for the same result.

Layout (llama.cpp's ``gguf.cpp``, gguf-py's ``gguf_writer.py``; little-endian):

- ``b"GGUF"``, version (u32), tensor count (u64), metadata count (u64);
- the metadata records: key (u64 length + UTF-8), value type (u32), value;
- per tensor: name (string), n_dims (u32), the dimensions innermost first (u64 each),
  ggml type (u32), offset (u64) of its data from the start of the data section; each
  tensor's data is padded to the alignment, so each offset is a multiple of it;
- zeros up to a multiple of the alignment, where the data section starts.
"""

import struct

MAGIC = b"GGUF"
VERSION = 3
#: GGUF value types written here (gguf-py's ``GGUFValueType``).
UINT32, STRING = 4, 8
#: ggml's GGML_MAX_DIMS.
MAX_DIMS = 4


def _string(text):
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def uint32_record(key, value):
    """The metadata record ``key`` = ``value`` as a GGUF UINT32.

    Examples
    --------
    >>> uint32_record("general.file_type", 2).hex(" ")
    '11 00 00 00 00 00 00 00 67 65 6e 65 72 61 6c 2e 66 69 6c 65 5f 74 79 70 65 04 00 00 00 02 00 00 00'
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise ValueError(f"{key}: a UINT32 value must be an integer in [0, 2**32), got {value!r}")
    return _string(key) + struct.pack("<II", UINT32, value)


def string_record(key, value):
    """The metadata record ``key`` = ``value`` as a GGUF STRING."""
    if not isinstance(value, str):
        raise TypeError(f"{key}: a STRING value must be a str, got {type(value).__name__}")
    return _string(key) + struct.pack("<I", STRING) + _string(value)


def data_size(nbytes, alignment):
    """``nbytes`` rounded up to a multiple of ``alignment``: the room a tensor takes."""
    return nbytes + (-nbytes % alignment)


def header(records, tensors, alignment):
    """The GGUF header bytes, padded to ``alignment``.

    Parameters
    ----------
    records : sequence of bytes
        Whole metadata records (key, type, value), written in order.
    tensors : sequence of (str, tuple of int, int, int)
        Name, shape (outermost first, as NumPy), ggml type id and data size in bytes of
        each tensor, in the order their data follows the header.
    alignment : int
        A power of two: the data section and each tensor's data start at multiples of it.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        An alignment that is not a power of two, a tensor of more than ``MAX_DIMS``
        dimensions, a negative size or dimension, or a duplicate tensor name.

    Examples
    --------
    >>> h = header([string_record("general.architecture", "llama")], [("w", (2, 32), 0, 256)], 32)
    >>> len(h) % 32, h[:4], struct.unpack_from("<IQQ", h, 4)
    (0, b'GGUF', (3, 1, 1))
    """
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment!r}")
    out = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(records))]
    out.extend(bytes(r) for r in records)
    offset = 0
    names = set()
    for name, shape, type_id, nbytes in tensors:
        if name in names:
            raise ValueError(f"tensor {name!r} appears twice")
        names.add(name)
        if len(shape) > MAX_DIMS or any(d < 0 for d in shape) or nbytes < 0:
            raise ValueError(f"tensor {name!r}: shape {tuple(shape)} and size {nbytes} cannot be stored in GGUF")
        out.append(_string(name))
        out.append(struct.pack(f"<I{len(shape)}QIQ", len(shape), *reversed(shape), type_id, offset))
        offset += data_size(nbytes, alignment)
    raw = b"".join(out)
    return raw + bytes(-len(raw) % alignment)
