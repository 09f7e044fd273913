"""A Hugging Face folder's SentencePiece vocabulary as llama.cpp's ``llama`` tokenizer.

What llama.cpp's converter (``convert_hf_to_gguf.py``: ``_create_vocab_sentencepiece``,
Phi-3's ``set_vocab`` and gguf-py's ``SpecialVocab``; read for the facts) writes from
``tokenizer.model`` and the side files, rebuilt without sentencepiece or protobuf:

* ``tokens``/``scores``/``token_type``: one entry per id of ``config.json``'s
  ``vocab_size``; ids the model has no piece for are ``[PAD{id}]``, score -10000,
  UNUSED. A piece keeps its score; its type is UNKNOWN, CONTROL, UNUSED or BYTE as in the
  model, NORMAL otherwise (llama.cpp writes SentencePiece's user-defined pieces as
  NORMAL). Pieces past ``vocab_size`` are dropped.
* added tokens, score -1000: ``added_tokens.json`` (USER_DEFINED), then
  ``tokenizer_config.json``'s ``added_tokens_decoder`` (CONTROL when special or when the
  text looks special, e.g. ``<|...|>`` or ``<unused..>``; else USER_DEFINED with ``▁``
  written as a space). Phi-3's variant marks only ``special`` ones CONTROL, keeps ``▁``,
  and also reads ``tokenizer.json``'s ``added_tokens``. Ids past ``vocab_size`` are
  skipped.
* special ids (bos, eos, unk, sep, pad, mask): ``tokenizer_config.json``'s ``*_token``
  looked up among ``tokenizer.json``'s added tokens, then ``config.json``'s
  ``*_token_id``; ``add_bos``/``add_eos``/``add_sep`` from ``tokenizer.json``'s
  post-processor, then ``tokenizer_config.json``'s ``add_*_token``; the chat template.

Every value read is checked; a malformed side file is one ``InputError``.
"""

import os
import re

from nbwoq.formats import sentencepiece_model as spm
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.source import read_json

_PAD_SCORE, _ADDED_SCORE = -10000.0, -1000.0
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "mask")
_ADD_FLAGS = ("bos", "eos", "sep")
_DECIMAL = re.compile(r"[0-9]{1,10}\Z")


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 31)


def side_file(folder, name, what=None):
    """``name`` in ``folder`` parsed as JSON, or None when there is no such file."""
    path = os.path.join(folder, name)
    return read_json(path, what or name) if os.path.isfile(path) else None


def _object(value, path, what):
    if value is not None and not isinstance(value, dict):
        raise InputError(f"{printable(path)}: {what} must be an object, got {type(value).__name__}")
    return value or {}


def looks_special(text):
    """llama.cpp's guess that an added token not marked special is a control token."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _added_decoder(folder):
    """``tokenizer_config.json``'s ``added_tokens_decoder``: ``[(id, content, special)]``."""
    cfg = side_file(folder, "tokenizer_config.json")
    path = os.path.join(folder, "tokenizer_config.json")
    decoder = _object(_object(cfg, path, "the file").get("added_tokens_decoder"), path, "added_tokens_decoder")
    out = []
    for key, entry in decoder.items():
        if not (isinstance(key, str) and _DECIMAL.match(key) and isinstance(entry, dict)
                and isinstance(entry.get("content"), str)):
            raise InputError(f"{printable(path)}: added_tokens_decoder entry {printable(key)} is not an id with "
                             "an object holding a string 'content'")
        out.append((int(key), entry["content"], bool(entry.get("special"))))
    return out


def _json_added_tokens(tok_json, path):
    """``tokenizer.json``'s ``added_tokens``: ``[(id, content, special)]``, checked."""
    added = tok_json.get("added_tokens", []) if tok_json is not None else []
    if not (isinstance(added, list) and all(isinstance(a, dict) and _is_id(a.get("id"))
                                            and isinstance(a.get("content"), str) for a in added)):
        raise InputError(f"{printable(path)}: added_tokens must be a list of objects with an integer 'id' "
                         "and a string 'content'")
    return [(a["id"], a["content"], bool(a.get("special"))) for a in added]


def sentencepiece_vocab(folder, n_vocab, phi3=False):
    """``(tokens, scores, types)`` of ``folder``'s ``tokenizer.model`` and added tokens,
    ``n_vocab`` entries each (types as llama.cpp's token type numbers)."""
    pieces = spm.read_pieces(os.path.join(folder, "tokenizer.model"))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [_PAD_SCORE] * n_vocab
    types = [spm.UNUSED] * n_vocab
    kept = (spm.UNKNOWN, spm.CONTROL, spm.UNUSED, spm.BYTE)
    for i, (piece, score, kind) in enumerate(pieces[:n_vocab]):
        tokens[i], scores[i], types[i] = piece, score, kind if kind in kept else spm.NORMAL

    path = os.path.join(folder, "added_tokens.json")
    added_json = _object(side_file(folder, "added_tokens.json"), path, "the file")
    for text, idx in added_json.items():
        if not _is_id(idx):
            raise InputError(f"{printable(path)}: token {printable(text)} has id {idx!r}, not a non-negative integer")
        if idx < n_vocab:
            tokens[idx], scores[idx], types[idx] = text, _ADDED_SCORE, spm.USER_DEFINED

    added = _added_decoder(folder)
    if phi3:
        tok_path = os.path.join(folder, "tokenizer.json")
        added += _json_added_tokens(side_file(folder, "tokenizer.json"), tok_path)
    for idx, text, special in added:
        if idx >= n_vocab:
            continue
        if special or (not phi3 and looks_special(text)):
            kind = spm.CONTROL
        else:
            kind = spm.USER_DEFINED
            if not phi3:
                text = text.replace("\u2581", " ")  # llama.cpp matches user-defined text before it escapes spaces
        tokens[idx], scores[idx], types[idx] = text, _ADDED_SCORE, kind
    return tokens, scores, types


def _content(entry):
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _template_flags(tok_json, contents, add):
    """``add_bos``/``add_eos`` from a ``TemplateProcessing`` post-processor's single-sequence
    template (its first and last special tokens), as gguf-py reads simple templates. (A
    last special token other than the eos is not made the eos, as gguf-py would.)"""
    post = tok_json.get("post_processor")
    if not isinstance(post, dict):
        return
    processors = post.get("processors", [post])
    for proc in processors if isinstance(processors, list) else ():
        kind = proc.get("type") if isinstance(proc, dict) else None
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            single = proc.get("single")
            if not isinstance(single, list) or len(single) < 2:
                continue
            ends = [s.get("SpecialToken") if isinstance(s, dict) else None for s in (single[0], single[-1])]
            first, last = (e.get("id") if isinstance(e, dict) and isinstance(e.get("id"), str) else None for e in ends)
            if first:
                if not contents["bos"]:
                    contents["bos"] = first
                add["bos"] = first in (contents["bos"], contents["cls"])
            if last:
                contents["eos"] = contents["eos"] or last
                add["eos"] = last == contents["eos"]


def _chat_template(folder, tok_cfg, path):
    template = tok_cfg.get("chat_template")
    if template is None:
        jinja = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(jinja):
            return _read_text(jinja)
        alt = side_file(folder, "chat_template.json")
        template = alt.get("chat_template") if isinstance(alt, dict) else None
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                          and isinstance(t.get("template"), str) for t in template):
        return template
    raise InputError(f"{printable(path)}: chat_template must be a string or a list of {{name, template}} objects")


def _read_text(path, limit=16 * 1024 * 1024):
    """A small UTF-8 text side file (a chat template)."""
    try:
        if os.path.getsize(path) > limit:
            raise InputError(f"{printable(path)}: too large for a chat template ({os.path.getsize(path)} bytes)")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{printable(path)}: not a readable UTF-8 chat template ({exc})") from None


def special_vocab(folder, config, n_vocab):
    """``(ids, add_flags, chat_template)``: the special token ids (``{"bos": 1, ...}``),
    whether llama.cpp adds bos/eos/sep (``{"bos": True, ...}``), and the chat template
    (None, a string, or a list of ``{name, template}``)."""
    tok_path = os.path.join(folder, "tokenizer.json")
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    tok_json = _object(side_file(folder, "tokenizer.json"), tok_path, "the file") or None
    tok_cfg = _object(side_file(folder, "tokenizer_config.json"), cfg_path, "the file")
    added = _json_added_tokens(tok_json, tok_path)
    contents = {typ: _content(tok_cfg.get(f"{typ}_token")) for typ in _SPECIAL_TYPES + ("cls",)}
    add, ids, template = {}, {}, None
    if tok_json:
        _template_flags(tok_json, contents, add)
    if tok_cfg:  # gguf-py reads the rest only beside a tokenizer_config.json
        template = _chat_template(folder, tok_cfg, cfg_path)
        for typ in _SPECIAL_TYPES:
            flag = tok_cfg.get(f"add_{typ}_token")
            if typ in _ADD_FLAGS and isinstance(flag, bool):
                add.setdefault(typ, flag)
            idx = next((i for i, text, _ in added if text == contents[typ]), None)
            if idx is not None and idx < n_vocab:
                ids[typ] = idx
    for typ in _SPECIAL_TYPES:
        idx = config.get(f"{typ}_token_id")
        if typ not in ids and _is_id(idx) and idx < n_vocab:
            ids[typ] = idx
    return ids, add, template


def write_special_vocab(gguf_writer, folder, config, n_vocab):
    """Write ``special_vocab``'s ids, flags and chat template with gguf-py's setters."""
    ids, add, template = special_vocab(folder, config, n_vocab)
    for typ, idx in ids.items():
        getattr(gguf_writer, f"add_{typ}_token_id")(idx)
    for typ, value in add.items():
        getattr(gguf_writer, f"add_add_{typ}_token")(value)
    if template is not None:
        gguf_writer.add_chat_template(template)
