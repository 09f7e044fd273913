"""A Hugging Face folder's SentencePiece vocabulary as llama.cpp's ``llama`` tokenizer, and
the special vocabulary of either tokenizer (``llama`` or byte-level BPE ``gpt2``).

What llama.cpp's converter (``convert_hf_to_gguf.py``: ``_create_vocab_sentencepiece``,
Phi-3's ``set_vocab``, ``_set_vocab_gpt2`` and gguf-py's ``SpecialVocab``; read for the
facts) writes from ``tokenizer.model`` and the side files, rebuilt without sentencepiece
or protobuf:

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
* the special vocabulary, for both tokenizers (``special_vocab``): ids (bos, eos, unk,
  sep, pad, mask, and eot/eom when the post-processor ends with a special token other
  than the eos) from ``tokenizer_config.json``'s ``*_token`` looked up among
  ``tokenizer.json``'s added tokens, then ``config.json``'s integer ``*_token_id`` (a
  list, as Qwen's and Llama 3.1's ``eos_token_id``, is no id to gguf-py); ``add_bos``/
  ``add_eos``/``add_sep`` from ``tokenizer.json``'s post-processor (``ByteLevel``: none,
  ``RobertaProcessing``: all, ``TemplateProcessing``: its first and last special tokens
  and its pair template), then ``tokenizer_config.json``'s ``add_*_token``; the chat
  template. Without a ``tokenizer_config.json``: the post-processor's flags and
  ``config.json``'s ids only.

Every value read is checked; a malformed side file is one ``InputError``.
"""

import os
import re

from nbwoq.formats import sentencepiece_model as spm
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.source import read_json

_PAD_SCORE, _ADDED_SCORE = -10000.0, -1000.0
_MAX_TEMPLATES = 64
_ID_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # gguf-py's order
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


def _piece_id(piece, kind, path):
    """The ``id`` of a post-processor template piece's ``SpecialToken`` or ``Sequence``."""
    if not isinstance(piece, dict):
        raise InputError(f"{printable(path)}: post_processor template entries must be objects")
    inner = piece.get(kind)
    if inner is None:
        return None
    if not (isinstance(inner, dict) and isinstance(inner.get("id", ""), str)):
        raise InputError(f"{printable(path)}: post_processor {kind} must be an object with a string 'id'")
    return inner.get("id")


def _list(value, path, what):
    if not isinstance(value, list):
        raise InputError(f"{printable(path)}: {what} must be a list, got {type(value).__name__}")
    return value


def _template(proc, cfg, types, add, path):
    """gguf-py's reading of a ``TemplateProcessing``: bos added when the single-sequence
    template starts with the bos (or cls) token, eos when it ends with a special token
    (which becomes the eos, the old eos the eot, then eom), sep from the pair template.
    ``cfg`` (``tokenizer_config.json``; empty when there is none) is updated as gguf-py
    updates it."""
    single = _list(proc.get("single", []), path, "TemplateProcessing single")
    pair = _list(proc.get("pair", []), path, "TemplateProcessing pair")
    tc = cfg if cfg else {}
    bos, cls, eos, sep = (tc.get(f"{typ}_token") for typ in ("bos", "cls", "eos", "sep"))
    first = last = None
    if len(single) > 1:
        first = _piece_id(single[0], "SpecialToken", path)
        if first:
            if not cfg:
                bos = first
            elif first not in (bos, cls):
                if not bos:
                    cfg["bos_token"] = bos = first
                if not cls:
                    cfg["cls_token"] = cls = first
            add["bos"] = first in (bos, cls)
        last = _piece_id(single[-1], "SpecialToken", path)
        if last:
            if not cfg:
                eos = last
            elif last != eos:
                extra = next((t for t in ("eot", "eom") if t not in types), None)
                if extra:
                    types.append(extra)
                    cfg[f"{extra}_token"] = eos
                cfg["eos_token"] = eos = last
            add["eos"] = True
    if not pair:
        return
    start = 1 if first and _piece_id(pair[0], "SpecialToken", path) == first else 0
    stop = -1 if last and _piece_id(pair[-1], "SpecialToken", path) == last else None
    pair = pair[start:stop]
    if not (pair and _piece_id(pair[0], "Sequence", path) == "A" and _piece_id(pair[-1], "Sequence", path) == "B"):
        return
    middle = pair[1:-1]
    if not middle:
        return
    entry = _piece_id(middle[0], "SpecialToken", path)
    add_sep = bool(entry and entry in (sep, eos) and not last)
    if len(middle) == 2:
        entry = _piece_id(middle[1], "SpecialToken", path)
        add_sep = add_sep or bool(entry and entry in (sep, eos))
    add["sep"] = add_sep
    if add_sep and not sep and cfg:
        cfg["sep_token"] = eos


def _post_processor(tok_json, cfg, types, add, path):
    """``add`` flags (and ``cfg`` updates) from ``tokenizer.json``'s post-processor, as
    llama.cpp's gguf-py ``SpecialVocab`` reads it: ``ByteLevel`` adds nothing unless said
    otherwise, ``RobertaProcessing`` adds bos, eos and sep, ``TemplateProcessing`` as
    ``_template``."""
    if cfg:
        for missing, fallback in (("bos", "cls"), ("eos", "sep")):
            if not cfg.get(f"{missing}_token") and cfg.get(f"{fallback}_token"):
                cfg[f"{missing}_token"] = cfg[f"{fallback}_token"]
    post = tok_json.get("post_processor")
    if not post:
        return
    if not isinstance(post, dict):
        raise InputError(f"{printable(path)}: post_processor must be an object, got {type(post).__name__}")
    for proc in _list(post.get("processors", [post]), path, "post_processor processors"):
        if not isinstance(proc, dict):
            raise InputError(f"{printable(path)}: post_processor processors must be objects")
        kind = proc.get("type")
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
            for typ, default in (("cls", "bos"), ("sep", "eos")):
                if cfg and not cfg.get(f"{typ}_token"):
                    given = _list(proc.get(typ, [cfg.get(f"{default}_token")]), path, f"RobertaProcessing {typ}")
                    cfg[f"{typ}_token"] = given[0] if given else None
        elif kind == "TemplateProcessing":
            _template(proc, cfg, types, add, path)


def _chat_template(folder, tok_cfg, path):
    """``tokenizer_config.json``'s ``chat_template``; without the key, ``chat_template.jinja``
    (with ``additional_chat_templates/*.jinja``: a named list, ``default`` first, the others
    by name) or ``chat_template.json``'s, as gguf-py picks them."""
    if "chat_template" in tok_cfg:
        template = tok_cfg["chat_template"]
    elif os.path.isfile(os.path.join(folder, "chat_template.jinja")):
        template = _read_text(os.path.join(folder, "chat_template.jinja"))
        extra_dir = os.path.join(folder, "additional_chat_templates")
        extra = sorted(n for n in os.listdir(extra_dir) if n.endswith(".jinja")) if os.path.isdir(extra_dir) else []
        if len(extra) > _MAX_TEMPLATES:  # each becomes a metadata key: a bound on what a folder can add
            raise InputError(f"{printable(extra_dir)}: {len(extra)} chat templates, more than {_MAX_TEMPLATES}")
        if extra:
            template = [{"name": "default", "template": template}] + [
                {"name": n[:-len(".jinja")], "template": _read_text(os.path.join(extra_dir, n))} for n in extra]
        return template
    else:
        alt = side_file(folder, "chat_template.json")
        template = alt.get("chat_template") if isinstance(alt, dict) else None
        path = os.path.join(folder, "chat_template.json")
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
    """``(ids, add_flags, chat_template)`` as llama.cpp's gguf-py ``SpecialVocab`` finds them:
    the special token ids with a GGUF key (``{"bos": 1, "eot": 7, ...}``), whether
    llama.cpp adds bos/eos/sep (``{"bos": True, ...}``), and the chat template (None, a
    string, or a list of ``{name, template}``). Ids at or past ``n_vocab`` are left out."""
    tok_path = os.path.join(folder, "tokenizer.json")
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    tok_json = _object(side_file(folder, "tokenizer.json"), tok_path, "the file") or None
    tok_cfg = dict(_object(side_file(folder, "tokenizer_config.json"), cfg_path, "the file"))
    added = _json_added_tokens(tok_json, tok_path)
    types = list(_ID_TYPES)
    add, found, template = {}, {}, None
    if tok_json:
        _post_processor(tok_json, tok_cfg, types, add, tok_path)
    if tok_cfg:  # gguf-py reads the rest only beside a tokenizer_config.json
        template = _chat_template(folder, tok_cfg, cfg_path)
        for typ in types:
            flag = tok_cfg.get(f"add_{typ}_token")
            if typ in _ADD_FLAGS and isinstance(flag, bool):
                add.setdefault(typ, flag)  # the post-processor's word wins, as in llama.cpp
            text = _content(tok_cfg.get(f"{typ}_token"))
            idx = next((i for i, t, _ in added if t == text), None) if text is not None else None
            if idx is not None and idx < n_vocab and typ not in found:
                found[typ] = idx
    text_config = config.get("text_config")
    for typ in types:
        idx = config.get(f"{typ}_token_id")
        if idx is None and isinstance(text_config, dict):  # multimodal configs, as gguf-py reads them
            idx = text_config.get(f"{typ}_token_id")
        if typ not in found and _is_id(idx) and idx < n_vocab:  # a list (Qwen, Llama 3.1) is not an id
            found[typ] = idx
    ids = {typ: idx for typ, idx in found.items() if typ != "cls"}  # GGUF has no cls key
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
