"""nbwoq's own reader of SentencePiece ``tokenizer.model`` files against SentencePiece itself.

The oracle is the ``sentencepiece`` package (a test dependency; the reader never imports
it): every piece, score and type the reader returns must be what SentencePiece's
processor reports for the same file, for trained models and for hand-built ones with
every piece type, reordered fields and fields the reader does not know. Mutated files
are either read the same way SentencePiece reads them or refused with ``InputError``.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwoq.formats import sentencepiece_model as spm_reader
from nbwoq.formats.errors import InputError

from sentencepiece_files import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, field, model_bytes,
                                 small_pieces, train, varint)


def _processor(path):
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(path))


def _oracle(sp):
    """``[(piece, score, type)]`` as SentencePiece reports them."""
    out = []
    for i in range(sp.vocab_size()):
        kind = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                else BYTE if sp.IsByte(i) else None)
        out.append((sp.IdToPiece(i), sp.GetScore(i), kind))
    return out


def _comparable(pieces):
    # SentencePiece's API has no IsUserDefined: user-defined and normal pieces both report None
    return [(p, s, None if k in (NORMAL, USER_DEFINED) else k) for p, s, k in pieces]


def test_trained_model_reads_as_sentencepiece_reads_it(tmp_path):
    sp = train(str(tmp_path), control_symbols=["<ctl>"], user_defined_symbols=["<mark>", "\u2581\u2581"])
    pieces = spm_reader.read_pieces(str(tmp_path / "tokenizer.model"))
    assert len(pieces) == sp.vocab_size() == 420
    assert _comparable(pieces) == _oracle(sp)
    kinds = {k for _, _, k in pieces}
    assert {UNKNOWN, CONTROL, USER_DEFINED, BYTE, NORMAL} <= kinds
    assert pieces[sp.PieceToId("<mark>")][2] == USER_DEFINED


def test_hand_built_model_with_every_piece_type(tmp_path):
    path = tmp_path / "tokenizer.model"
    want = small_pieces()
    path.write_bytes(model_bytes(want, trainer=field(3, 0, 2) + field(35, 0, 1), normalizer=field(3, 0, 0)))
    got = spm_reader.read_pieces(str(path))
    assert got == [(p, s, NORMAL if k is None else k) for p, s, k in want]
    assert _comparable(got) == _oracle(_processor(path))  # the file is one SentencePiece loads, alike


def test_field_order_and_unknown_fields_do_not_matter(tmp_path):
    """Protobuf allows any field order and unknown fields (every wire type) anywhere."""
    unknown = field(200, 0, 7) + field(201, 1, b"\x01" * 8) + field(202, 2, b"skip me") + field(203, 5, b"\x00" * 4)
    body = b""
    for text, score, kind in small_pieces():
        inner = (field(3, 0, kind or NORMAL) + unknown + field(2, 5, struct.pack("<f", score))
                 + field(1, 2, text.encode()))
        body += field(1, 2, inner)
    data = field(2, 2, field(4, 0, 300) + field(35, 0, 1)) + body + field(5, 2, b"") + field(4, 2, b"")
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    want = [(p, s, k or NORMAL) for p, s, k in small_pieces()]
    assert spm_reader.read_pieces(str(path)) == want
    assert _comparable(want) == _oracle(_processor(path))


def test_negative_ids_and_ten_byte_varints_are_read(tmp_path):
    # trainer_spec.pad_id = -1 is a ten-byte varint, as protobuf writes negative int32s
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model_bytes(small_pieces(), trainer=field(43, 0, -1)))
    assert len(varint(-1)) == 10
    assert len(spm_reader.read_pieces(str(path))) == len(small_pieces())


_VALID = model_bytes(small_pieces(), trainer=field(35, 0, 1))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_files_are_read_alike_or_refused(tmp_path_factory, data):
    """A cut, overwritten or inserted stretch of bytes: the reader returns what
    SentencePiece returns for the same bytes, or raises InputError, never anything else."""
    buf = bytearray(_VALID)
    op = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    at = data.draw(st.integers(0, len(buf)))
    if op == "cut":
        buf = buf[:at]
    elif op == "flip":
        junk = data.draw(st.binary(min_size=1, max_size=8))
        buf[at:at + len(junk)] = junk
    else:
        buf[at:at] = data.draw(st.binary(min_size=1, max_size=12))
    path = tmp_path_factory.mktemp("fuzz") / "tokenizer.model"
    path.write_bytes(bytes(buf))
    try:
        got = spm_reader.read_pieces(str(path))
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    try:
        sp = _processor(path)
    except (RuntimeError, OSError):
        return  # SentencePiece refuses something the pieces do not show (a trainer or normalizer field)
    assert _comparable(got) == _oracle(sp)



def test_nbwoq_never_imports_sentencepiece_or_protobuf():
    import ast
    import pathlib

    import nbwoq

    root = pathlib.Path(nbwoq.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("sentencepiece", "google") for n in names), (path, names)
