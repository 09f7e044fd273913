"""SentencePiece model files for tests: hand-built ``ModelProto`` bytes and tiny trained models.

``model_bytes`` writes the protobuf by hand (field numbers of SentencePiece's
``sentencepiece_model.proto``), so a test can make pieces SentencePiece's trainer never
makes (UNUSED ones) and hostile variants byte by byte. ``train`` makes a real model with
the ``sentencepiece`` package (tests only; skipped where it is absent) from a fixed text.
"""

import struct

import pytest

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def varint(value):
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32 enums/ids: ten-byte two's complement, as protobuf writes
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, wire, payload):
    """One field: key, then the payload (a varint's value, raw fixed bytes, or a
    length-prefixed message/string)."""
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def piece(text, score=0.0, kind=None):
    body = field(1, 2, text.encode("utf-8")) + field(2, 5, struct.pack("<f", score))
    if kind is not None:
        body += field(3, 0, kind)
    return field(1, 2, body)


def model_bytes(pieces, trainer=b"", normalizer=b""):
    """A ``ModelProto``: ``pieces`` = ``[(text, score, type)]``, then a trainer spec and a
    normalizer spec (each a raw message body, possibly empty)."""
    out = b"".join(piece(*p) for p in pieces)
    if trainer:
        out += field(2, 2, trainer)
    if normalizer:
        out += field(3, 2, normalizer)
    return out


def small_pieces():
    """A valid vocabulary with every piece type."""
    return ([("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL), ("<mark>", 0.0, USER_DEFINED)]
            + [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
            + [("\u2581the", -1.0, None), ("\u2581a", -2.0, NORMAL), ("x", -3.5, NORMAL), ("<old>", 0.0, UNUSED),
               ("\u4e2d", -4.25, NORMAL)])


TEXT = "\n".join([
    "Weight-only quantization stores each row of a matrix as small integers and a scale.",
    "The quick brown fox jumps over the lazy dog; the lazy dog sleeps in the sun.",
    "Numbers like 12345 and 3.14159 appear, as do dates: 2024-05-17.",
    "llama.cpp reads GGUF files; transformers reads them too, and so do we.",
    "Über naïve café owners who said 你好 and 世界 to the 🙂 emoji.",
    "  Two leading spaces, tabs\tand trailing spaces   ",
] * 8)


def train(folder, vocab_size=420, **options):
    """Train a BPE SentencePiece model with byte fallback on ``TEXT`` into
    ``folder/tokenizer.model``; returns a loaded ``SentencePieceProcessor``. The options
    are the trainer's (e.g. ``add_dummy_prefix=False`` for Gemma's)."""
    spm = pytest.importorskip("sentencepiece")
    import os

    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write(TEXT)
    kw = dict(model_type="bpe", byte_fallback=True, character_coverage=1.0, remove_extra_whitespaces=False,
              normalization_rule_name="identity", vocab_size=vocab_size, num_threads=1, minloglevel=2)
    kw.update(options)
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(folder, "tokenizer"), **kw)
    os.remove(corpus)
    os.remove(os.path.join(folder, "tokenizer.vocab"))
    return spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
