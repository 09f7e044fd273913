"""``gguf_check.scan`` on arrays of metadata strings: each string must be UTF-8 on its own.

The scan checks runs of strings in one decode with the length fields zeroed; the oracle
here is the obvious rule, each item decoded alone (Python's ``bytes.decode``)."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwoq.formats import gguf_check
from nbwoq.formats.errors import InputError

pytest.importorskip("gguf")  # the scan reads gguf-py's table of block sizes


def _s(raw):
    return struct.pack("<Q", len(raw)) + raw


def _gguf(path, items):
    """A GGUF file with ``general.architecture`` and a string array ``tok`` of ``items``."""
    kvs = (_s(b"general.architecture") + struct.pack("<I", 8) + _s(b"llama"),
           _s(b"tok") + struct.pack("<IIQ", 9, 8, len(items)) + b"".join(_s(i) for i in items))
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    path.write_bytes(body + bytes(-len(body) % 32))
    return str(path)


def _first_bad(items):
    for i, raw in enumerate(items):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return None


PIECES = [b"", b"a", b"tok", "\u00e9".encode(), "\u4e2d".encode(), "\U0001f600".encode(), b"\xe4", b"\xb8\xad",
          b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00", b"\x80"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=4).map(b"".join), max_size=12),
       st.sampled_from([1, 7, 1 << 24]))
def test_each_string_is_checked_alone(tmp_path_factory, items, run):
    path = _gguf(tmp_path_factory.mktemp("g") / "t.gguf", items)
    bad = _first_bad(items)
    old = gguf_check._UTF8_RUN
    gguf_check._UTF8_RUN = run  # runs of one string, of a few, of all
    try:
        if bad is None:
            assert gguf_check.scan(path).keys["tok"].stop > 0
        else:
            with pytest.raises(InputError, match=f"item {bad} of 'tok', .* is not valid UTF-8"):
                gguf_check.scan(path)
    finally:
        gguf_check._UTF8_RUN = old


def test_a_character_split_across_two_strings_is_refused(tmp_path):
    """Together the two items are valid UTF-8 ("a" and U+4E2D), each alone is not."""
    path = _gguf(tmp_path / "t.gguf", [b"a\xe4", b"\xb8\xad"])
    with pytest.raises(InputError, match="item 0 of 'tok'"):
        gguf_check.scan(path)


def test_a_length_field_never_completes_a_character(tmp_path):
    """Item 1 is 173 bytes long: its length field starts with 0xAD, which would complete
    item 0's unfinished U+4E2D if the fields were decoded with the strings."""
    path = _gguf(tmp_path / "t.gguf", [b"a\xe4\xb8", b"x" * 0xAD])
    with pytest.raises(InputError, match="item 0 of 'tok'"):
        gguf_check.scan(path)


def test_ggml_type_table_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    for gtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert gguf_check.GGML_TYPES[int(gtype)] == (gtype.name, block, size)
        assert gguf_check.ggml_type_id(gtype.name) == int(gtype)
    assert set(gguf_check.GGML_TYPES) == {int(t) for t in gguf.GGML_QUANT_SIZES}
    assert gguf_check.QUANT_VERSION == gguf.GGML_QUANT_VERSION
    assert gguf_check.ggml_type(77) is None
