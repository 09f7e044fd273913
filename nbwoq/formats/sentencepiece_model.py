"""A SentencePiece ``tokenizer.model`` read as untrusted bytes: its pieces, scores and types.

The file is a serialized protobuf ``sentencepiece.ModelProto`` (facts from SentencePiece's
``sentencepiece_model.proto``): field 1 repeats ``SentencePiece`` messages (``piece`` 1,
a UTF-8 string; ``score`` 2, a 32-bit float; ``type`` 3, an enum, NORMAL when absent);
the trainer, normalizer and self-test messages (fields 2 to 5) are not needed here:
their structure is checked, their values are not read. Fields may come in any order and a number this reader does
not know is skipped by its wire type, as protobuf readers do.

No protobuf or sentencepiece import: every varint is at most 10 bytes and every length
lies inside its enclosing message, so hostile bytes (truncated, lengths past the end,
endless varints, unknown wire types) are one ``InputError`` naming the file and the
offset, found before anything is written. The pieces are then checked as SentencePiece's
own loader checks them: non-empty, unique, known types, byte pieces spelled ``<0xXX>``,
exactly one unknown piece.
"""

import os
import re
import struct

from nbwoq.formats.errors import InputError, printable

#: SentencePiece's piece types (``ModelProto.SentencePiece.Type``); llama.cpp's token
#: types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_TYPES = frozenset((NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE))

#: Real models' files are a few MB (Gemma 3's 262144 pieces: 4.7 MB).
MAX_BYTES = 256 * 1024 * 1024
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>\Z")
_FLOAT = struct.Struct("<f")


class _Malformed(Exception):
    """A structural fault at an offset; turned into one ``InputError`` by ``read_pieces``."""


def _expect(number, wire, want, at):
    if wire != want:
        raise _Malformed(f"field {number} of a piece (message at byte {at}) has wire type {wire}, expected {want}")


def _varint(buf, pos, end):
    """The unsigned varint at ``pos`` (at most 10 bytes, below 2**64) and the offset after it."""
    if pos < end and buf[pos] < 0x80:
        return buf[pos], pos + 1
    value = shift = 0
    for i in range(10):
        if pos + i >= end:
            raise _Malformed(f"varint at byte {pos} runs past the end of its message")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >> 64:
                raise _Malformed(f"varint at byte {pos} exceeds 64 bits")
            return value, pos + i + 1
        shift += 7
    raise _Malformed(f"varint at byte {pos} is longer than 10 bytes")


def _field(buf, pos, end):
    """The field at ``pos`` of the message ending at ``end``: ``(number, wire type, value,
    offset after it)``, the value an int for a varint, the ``(start, stop)`` of its bytes
    otherwise."""
    at = pos
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if not 1 <= number < (1 << 29):
        raise _Malformed(f"field number {number} at byte {at} is out of range")
    if wire == _VARINT:
        value, pos = _varint(buf, pos, end)
        return number, wire, value, pos
    if wire == _BYTES:
        size, pos = _varint(buf, pos, end)
    elif wire in (_FIXED64, _FIXED32):
        size = 8 if wire == _FIXED64 else 4
    else:  # 3, 4: groups (never used by SentencePiece); 6, 7: not wire types
        raise _Malformed(f"field {number} at byte {at} has wire type {wire}, which this reader does not accept")
    if size > end - pos:
        raise _Malformed(f"field {number} at byte {at} declares {size} bytes, its message has {end - pos} left")
    return number, wire, (pos, pos + size), pos + size


def _text(buf, start, stop):
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"piece at byte {start} is not valid UTF-8") from None


def _piece(buf, start, stop):
    """``(piece, score, type)`` of the ``SentencePiece`` message in ``buf[start:stop]``."""
    # The layout SentencePiece writes (piece, score, type when not NORMAL), read directly:
    # a vocabulary of 262144 pieces takes a second, not several.
    if stop - start >= 7 and buf[start] == 0x0A and buf[start + 1] < 0x80:
        after = start + 2 + buf[start + 1]
        if after + 5 <= stop and buf[after] == 0x15:
            tail = stop - after - 5
            if tail == 0 or (tail == 2 and buf[after + 5] == 0x18 and buf[after + 6] < 0x80):
                return (_text(buf, start + 2, after), _FLOAT.unpack_from(buf, after + 1)[0],
                        buf[after + 6] if tail else NORMAL)
    piece, score, kind = "", 0.0, NORMAL
    pos = start
    while pos < stop:
        number, wire, value, pos = _field(buf, pos, stop)
        if number == 1:
            _expect(number, wire, _BYTES, start)
            piece = _text(buf, *value)
        elif number == 2:
            _expect(number, wire, _FIXED32, start)
            score = _FLOAT.unpack_from(buf, value[0])[0]
        elif number == 3:
            _expect(number, wire, _VARINT, start)
            kind = value
    return piece, score, kind


def _walk(buf, start, stop, nested=()):
    """Check the structure of a message whose values are not needed (trainer, normalizer,
    self-test data); ``nested``: its field numbers that hold messages, checked too."""
    pos = start
    while pos < stop:
        number, wire, value, pos = _field(buf, pos, stop)
        if number in nested and wire == _BYTES:
            _walk(buf, *value)


def _check_pieces(pieces):
    """SentencePiece's own load checks, as one message or None."""
    seen = {}
    unknown = 0
    for i, (piece, _, kind) in enumerate(pieces):
        if kind not in _TYPES:
            return f"piece {i} has type {kind}, not one of SentencePiece's {sorted(_TYPES)}"
        if not piece:
            return f"piece {i} is empty"
        if piece in seen:
            return f"piece {printable(piece)} is both piece {seen[piece]} and piece {i}"
        if kind == BYTE and not _BYTE_PIECE.match(piece):
            return f"byte piece {i} is {printable(piece)}, not <0xXX>"
        seen[piece] = i
        unknown += kind == UNKNOWN
    if unknown != 1:
        return f"it has {unknown} unknown pieces, SentencePiece needs exactly one"
    return None


def read_pieces(path, max_bytes=MAX_BYTES):
    """The pieces of SentencePiece model ``path``: a list of ``(piece, score, type)`` in
    id order (``piece`` a str, ``score`` a float32 value as a Python float, ``type`` one
    of the module's piece types).

    Raises
    ------
    InputError
        The file cannot be read, is larger than ``max_bytes``, is not a well-formed
        ``ModelProto`` or holds pieces SentencePiece itself would refuse.
    """
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise InputError(f"{printable(path)}: too large for a SentencePiece model ({size} bytes)")
        with open(path, "rb") as f:
            buf = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"{printable(path)}: cannot read the SentencePiece model ({exc.strerror or exc})") from None
    if len(buf) > max_bytes:
        raise InputError(f"{printable(path)}: too large for a SentencePiece model")
    try:
        pieces = []
        pos, end = 0, len(buf)
        while pos < end:
            if buf[pos] == 0x0A and pos + 1 < end and buf[pos + 1] < 0x80:  # a short piece message
                stop = pos + 2 + buf[pos + 1]
                if stop > end:
                    raise _Malformed(f"field 1 at byte {pos} declares {buf[pos + 1]} bytes, the file has "
                                     f"{end - pos - 2} left")
                pieces.append(_piece(buf, pos + 2, stop))
                pos = stop
                continue
            number, wire, value, pos = _field(buf, pos, end)
            if number == 1:
                if wire != _BYTES:
                    raise _Malformed(f"field 1 (a piece) has wire type {wire}, expected {_BYTES}")
                pieces.append(_piece(buf, *value))
            elif number in (2, 3, 4, 5) and wire == _BYTES:  # trainer, normalizer, self-test, denormalizer
                _walk(buf, *value, nested=(1,) if number == 4 else ())
    except _Malformed as exc:
        raise InputError(f"{printable(path)}: not a valid SentencePiece model ({exc})") from None
    problem = _check_pieces(pieces) if pieces else "it holds no pieces"
    if problem:
        raise InputError(f"{printable(path)}: not a valid SentencePiece model ({problem})")
    return pieces
