"""llama.cpp's name for a byte-level BPE ``tokenizer.json``'s pre-tokenizer (``tokenizer.ggml.pre``).

Before BPE merges run, llama.cpp splits text with a fixed list of regexes chosen by the
file's ``tokenizer.ggml.pre`` name (``llama-vocab.cpp``: the name selects a
``LLAMA_VOCAB_PRE_TYPE_*``, the type its regexes and a few flags). A wrong name does not
fail: llama.cpp splits with another list (unknown to it: ``default``) and tokenizes
differently from the model's own tokenizer, so the model silently sees unfamiliar token
sequences. llama.cpp's converter picks the name by hashing the ids a Hugging Face
tokenizer gives a fixed text; nbwoq needs no tokenizer library, so it reads what
``tokenizer.json`` declares instead: its ``pre_tokenizer`` (regex ``Split`` steps,
``Digits``, ``ByteLevel``), its ``normalizer`` and the BPE model's ``ignore_merges``, and
looks them up in ``PRE_TOKENIZERS``, one row per llama.cpp name, written as the models
ship them (the regex strings are tokenizer.json's, which llama.cpp adapts to its own
regex engine with the same splits).

A declaration no row matches is one ``InputError``: llama.cpp's converter refuses a BPE
pre-tokenizer it does not know as well, and a file that tokenizes differently from its
model is worse than no file.
"""

from nbwoq.formats.errors import InputError, printable

# tiktoken's cl100k split: Llama 3 (and 3.1, 3.2, 3.3), DBRX, Phi-4.
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 1.5, Qwen2, Qwen2.5, Qwen3 (cl100k's with single digits).
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5: letters keep their combining marks.
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral's Tekken (Mistral NeMo): words split at case changes, single digits.
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tiktoken's o200k split (GPT-4o; Phi-4-mini): Tekken's with contractions and 3-digit groups.
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Steps of a pre-tokenizer as ``_step`` writes them.
_BYTES = ("ByteLevel", False)  # bytes to GPT-2's printable characters, after an explicit split
_GPT2 = ("ByteLevel", True)  # the same after GPT-2's own split regex (``use_regex``)
_DIGITS = ("Digits", True)  # every digit on its own


def _split(regex):
    return ("Split", regex)


#: ``(llama.cpp's name, pre-tokenizer steps, BPE model's ignore_merges or None for either)``.
#: Names sharing one llama.cpp split are told apart by what else the name sets: llama-bpe
#: makes llama.cpp look whole words up before merging (``ignore_merges``, which Llama 3's
#: tokenizer.json alone declares) and add a BOS unless the file says otherwise, dbrx
#: neither. Other names llama.cpp gives the same split
#: (starcoder and refact for smollm's, stablelm2 for qwen2's, mpt and olmo for gpt-2's)
#: differ from these only in flags that do not change token ids, so one name stands for
#: each split.
PRE_TOKENIZERS = (
    ("llama-bpe", (_split(CL100K), _BYTES), True),
    ("dbrx", (_split(CL100K), _BYTES), False),
    ("qwen2", (_split(QWEN2), _BYTES), None),
    ("qwen35", (_split(QWEN35), _BYTES), None),
    ("tekken", (_split(TEKKEN), _BYTES), None),
    ("gpt-4o", (_split(O200K), _BYTES), None),
    ("smollm", (_DIGITS, _GPT2), None),  # SmolLM, SmolLM2 (StarCoder2's tokenizer)
    ("gpt-2", (_GPT2,), None),
)

# llama.cpp applies no normalizer for these names; Qwen ships NFC, which its converter accepts.
_NORMALIZERS = (None, "NFC")


def _check_table(rows):
    """Every row is findable: no two rows claim the same declaration."""
    seen = {}
    for name, steps, ignore_merges in rows:
        for flag in (True, False) if ignore_merges is None else (ignore_merges,):
            key = (steps, flag)
            if key in seen:
                raise AssertionError(f"bpe_pre: {name} and {seen[key]} match the same tokenizer.json")
            seen[key] = name


_check_table(PRE_TOKENIZERS)


def _bad(path, what, value):
    return InputError(f"{printable(path)}: {what}, got {repr(value)[:80]}")  # repr escapes control characters


def _flag(obj, key, default, path, where):
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise _bad(path, f"{where}'s {key!r} must be true or false", value)
    return value


#: Sequences nested deeper than this are refused (real files nest one level), so that no
#: file can exhaust the interpreter's stack here.
_MAX_NESTING = 16


def _step(pre, path, depth=0):
    """One pre-tokenizer object as a hashable step; the whole step list of a ``Sequence``."""
    if not isinstance(pre, dict) or not isinstance(pre.get("type"), str):
        raise _bad(path, "a pre-tokenizer must be an object with a string 'type'", pre)
    kind = pre["type"]
    if kind == "Sequence":
        inner = pre.get("pretokenizers")
        if not isinstance(inner, list):
            raise _bad(path, "a Sequence pre-tokenizer's 'pretokenizers' must be a list", inner)
        if depth >= _MAX_NESTING:
            raise InputError(f"{printable(path)}: pre-tokenizer Sequences nested more than {_MAX_NESTING} deep")
        return tuple(s for p in inner for s in _step(p, path, depth + 1))
    if kind == "Split":
        pattern = pre.get("pattern")
        if not (isinstance(pattern, dict) and len(pattern) == 1
                and next(iter(pattern)) in ("Regex", "String") and isinstance(next(iter(pattern.values())), str)):
            raise _bad(path, "a Split pre-tokenizer's 'pattern' must be {\"Regex\": string} or {\"String\": string}",
                       pattern)
        behavior = pre.get("behavior")
        if not isinstance(behavior, str):
            raise _bad(path, "a Split pre-tokenizer's 'behavior' must be a string", behavior)
        invert = _flag(pre, "invert", False, path, "Split")
        (how, text), = pattern.items()
        if how == "Regex" and behavior == "Isolated" and not invert:
            return (_split(text),)  # llama.cpp keeps every match and every gap as a piece
        return (("Split", how, text, behavior, invert),)
    if kind == "ByteLevel":
        prefix = _flag(pre, "add_prefix_space", True, path, "ByteLevel")
        use_regex = _flag(pre, "use_regex", True, path, "ByteLevel")
        _flag(pre, "trim_offsets", True, path, "ByteLevel")  # offsets only
        return (("ByteLevel", use_regex) if not prefix else ("ByteLevel", use_regex, "add_prefix_space"),)
    if kind == "Digits":
        return (("Digits", _flag(pre, "individual_digits", False, path, "Digits")),)
    return ((kind,),)


def _normalizer(tok, path):
    """The normalizer's type (``Sequence``s of one or none unwrapped), or None."""
    norm = tok.get("normalizer")
    while isinstance(norm, dict) and norm.get("type") == "Sequence":
        inner = norm.get("normalizers")
        if not isinstance(inner, list):
            raise _bad(path, "a Sequence normalizer's 'normalizers' must be a list", inner)
        if len(inner) > 1:
            return "Sequence"
        norm = inner[0] if inner else None
    if norm is None:
        return None
    if not isinstance(norm, dict) or not isinstance(norm.get("type"), str):
        raise _bad(path, "the normalizer must be null or an object with a string 'type'", norm)
    return norm["type"]


def describe(steps):
    """A short readable form of ``_step``'s result for messages; strings read from the file
    are quoted by ``printable`` (backslashes doubled, as tokenizer.json's JSON shows them)."""
    parts = []
    for step in steps:
        if step[0] == "Split" and len(step) == 2:
            parts.append(f"Split(Regex {printable(step[1])})")
        elif step[0] == "Split":
            parts.append(f"Split({step[1]} {printable(step[2])}, {printable(step[3])}"
                         f"{', inverted' if step[4] else ''})")
        elif step[0] == "ByteLevel":
            parts.append("ByteLevel(" + ", ".join(["use_regex" if step[1] else "no regex", *step[2:]]) + ")")
        elif step[0] == "Digits":
            parts.append("Digits(individual)" if step[1] else "Digits(grouped)")
        else:
            parts.append(printable(step[0]))
    text = " + ".join(parts) or "none"
    return text if len(text) <= 200 else text[:197] + "..."


def pre_tokenizer_name(tok, path="tokenizer.json"):
    """llama.cpp's ``tokenizer.ggml.pre`` name for the byte-level BPE tokenizer ``tok``.

    Parameters
    ----------
    tok : dict
        A parsed ``tokenizer.json`` whose ``model`` is BPE (untrusted: every value used is
        checked).
    path : str
        The file's name, for messages.

    Returns
    -------
    str
        A name of ``PRE_TOKENIZERS``.

    Raises
    ------
    InputError
        A malformed pre-tokenizer, normalizer or ``ignore_merges``; or a pre-tokenizer or
        normalizer that no llama.cpp name reproduces (the message names it).

    Examples
    --------
    >>> pre_tokenizer_name({"model": {"type": "BPE"},
    ...                     "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}})
    'gpt-2'
    """
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
        raise _bad(path, "a tokenizer.json must be an object with a 'model' object", type(tok).__name__)
    pre = tok.get("pre_tokenizer")
    steps = () if pre is None else _step(pre, path)
    ignore_merges = _flag(tok["model"], "ignore_merges", False, path, "the BPE model")
    normalizer = _normalizer(tok, path)
    if normalizer not in _NORMALIZERS:
        raise InputError(f"{printable(path)}: normalizer {printable(normalizer)} is not applied by llama.cpp's "
                         "gpt2 tokenizer, so the GGUF would tokenize differently from the model; convert the "
                         "folder with llama.cpp's convert_hf_to_gguf.py")
    for name, want, merges in PRE_TOKENIZERS:
        if steps == want and merges in (None, ignore_merges):
            return name
    names = ", ".join(name for name, _, _ in PRE_TOKENIZERS)
    raise InputError(f"{printable(path)}: pre-tokenizer {describe(steps)} matches none of the llama.cpp "
                     f"pre-tokenizers nbwoq knows ({names}); under any other name llama.cpp would split text "
                     "differently from the model's tokenizer, so nothing is written: convert the folder with "
                     "llama.cpp's convert_hf_to_gguf.py")
