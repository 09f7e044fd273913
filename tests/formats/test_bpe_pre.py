"""A byte-level BPE tokenizer.json's pre-tokenizer -> llama.cpp's ``tokenizer.ggml.pre`` name.

The fragments are written as the real models' tokenizer.json files hold them (JSON text,
regexes JSON-escaped), so a typo in the table's regexes or in the keys read fails here.
"""

import json

import pytest

from nbwoq.formats import bpe_pre
from nbwoq.formats.errors import InputError

_BYTES = '{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}'
_BYTES_QWEN = '{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}'


def _split(regex_json):
    return '{"type": "Split", "pattern": {"Regex": "%s"}, "behavior": "Isolated", "invert": false}' % regex_json


def _seq(*parts):
    return '{"type": "Sequence", "pretokenizers": [%s]}' % ", ".join(parts)


LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
             r"|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
            r"|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN35_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
             r"| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
TEKKEN_RE = (r"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
             r"|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}"
             r"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
O200K_RE = (r"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
            r"[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
            r"|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# (name, normalizer, pre_tokenizer, ignore_merges) as each model family ships tokenizer.json
SHIPPED = [
    ("llama-bpe", "null", _seq(_split(LLAMA3_RE), _BYTES), True),  # Llama 3, 3.1, 3.2, 3.3
    ("dbrx", "null", _seq(_split(LLAMA3_RE), _BYTES), False),  # the same split without ignore_merges
    ("qwen2", '{"type": "NFC"}', _seq(_split(QWEN2_RE), _BYTES_QWEN), False),  # Qwen2, Qwen2.5, Qwen3
    ("qwen35", '{"type": "NFC"}', _seq(_split(QWEN35_RE), _BYTES_QWEN), False),
    ("tekken", "null", _seq(_split(TEKKEN_RE), _BYTES), False),  # Mistral NeMo
    ("gpt-4o", "null", _seq(_split(O200K_RE), _BYTES), False),  # Phi-4-mini
    ("smollm", "null", _seq('{"type": "Digits", "individual_digits": true}',
                            '{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, '
                            '"use_regex": true}'), False),  # SmolLM, SmolLM2
    ("gpt-2", "null", '{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}',
     False),
]


def _tokenizer_json(normalizer, pre, ignore_merges=False, model_extra=""):
    text = ('{"version": "1.0", "added_tokens": [], "normalizer": %s, "pre_tokenizer": %s, "model": {"type": "BPE", '
            '"dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": %s%s, '
            '"vocab": {"a": 0}, "merges": []}}' % (normalizer, pre, json.dumps(ignore_merges), model_extra))
    return json.loads(text)


@pytest.mark.parametrize("name, normalizer, pre, ignore_merges", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_pre_tokenizers_get_llama_cpp_names(name, normalizer, pre, ignore_merges):
    assert bpe_pre.pre_tokenizer_name(_tokenizer_json(normalizer, pre, ignore_merges)) == name


def test_every_name_is_covered_and_llama_cpp_knows_it():
    assert sorted(s[0] for s in SHIPPED) == sorted(row[0] for row in bpe_pre.PRE_TOKENIZERS)


def test_older_files_without_use_regex_or_ignore_merges():
    """tokenizers before 0.19 wrote neither key: both defaults are the library's."""
    tok = _tokenizer_json("null", '{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true}')
    del tok["model"]["ignore_merges"]
    assert bpe_pre.pre_tokenizer_name(tok) == "gpt-2"
    tok["pre_tokenizer"] = json.loads(_seq(_split(LLAMA3_RE), _BYTES))
    assert bpe_pre.pre_tokenizer_name(tok) == "dbrx"


def test_a_one_element_sequence_is_its_element():
    tok = _tokenizer_json('{"type": "Sequence", "normalizers": []}', _seq(SHIPPED[-1][2]))
    assert bpe_pre.pre_tokenizer_name(tok) == "gpt-2"


UNKNOWN = {
    # DeepSeek Coder: its own chain of splits
    "deepseek-coder": (_seq(_split(r"[\\r\\n]"), _split(r"\\s?\\p{L}+"), _split(r"\\s?\\p{P}+"),
                            '{"type": "Digits", "individual_digits": true}', _BYTES),
                       r"Split(Regex '[\\r\\n]') + Split(Regex '\\s?\\p{L}+')"),
    "prefix-space": ('{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}',
                     "add_prefix_space"),
    "no-byte-level": (_seq(_split(LLAMA3_RE)), "matches none"),
    "none": ("null", "pre-tokenizer none matches"),
    "merged-split": ('{"type": "Split", "pattern": {"Regex": "x"}, "behavior": "MergedWithPrevious", '
                     '"invert": false}', "Split(Regex 'x', 'MergedWithPrevious')"),
    "string-split": ('{"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": false}',
                     "Split(String ' '"),
    "grouped-digits": (_seq('{"type": "Digits", "individual_digits": false}', SHIPPED[-1][2]), "Digits(grouped)"),
    "metaspace": ('{"type": "Metaspace", "replacement": "\\u2581", "prepend_scheme": "first", "split": false}',
                  "pre-tokenizer 'Metaspace' matches"),
    "reordered": (_seq(_BYTES, _split(QWEN2_RE)), "ByteLevel(no regex) + Split"),
}


@pytest.mark.parametrize("pre, needle", UNKNOWN.values(), ids=UNKNOWN.keys())
def test_unknown_pre_tokenizers_are_refused_by_name(pre, needle):
    with pytest.raises(InputError) as info:
        bpe_pre.pre_tokenizer_name(_tokenizer_json("null", pre), "/m/tokenizer.json")
    msg = str(info.value)
    assert needle in msg and "matches none of the llama.cpp pre-tokenizers" in msg and "llama-bpe" in msg, msg
    assert msg.startswith("'/m/tokenizer.json': ") and "\n" not in msg


def test_a_normalizer_llama_cpp_does_not_apply_is_refused():
    with pytest.raises(InputError, match="normalizer 'Lowercase' is not applied"):
        bpe_pre.pre_tokenizer_name(_tokenizer_json('{"type": "Lowercase"}', SHIPPED[-1][2]))
    two = '{"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}'
    with pytest.raises(InputError, match="normalizer 'Sequence'"):
        bpe_pre.pre_tokenizer_name(_tokenizer_json(two, SHIPPED[-1][2]))


def test_a_long_regex_is_shortened_in_the_message():
    with pytest.raises(InputError) as info:
        bpe_pre.pre_tokenizer_name(_tokenizer_json("null", _seq(_split("x" * 1000), _BYTES)))
    assert "..." in str(info.value) and len(str(info.value)) < 600


MALFORMED = {
    "pre-list": ('"pre_tokenizer"', "[]", "must be an object with a string 'type'"),
    "pre-type": ('"pre_tokenizer"', '{"type": 3}', "must be an object with a string 'type'"),
    "sequence": ('"pre_tokenizer"', '{"type": "Sequence", "pretokenizers": "ByteLevel"}', "'pretokenizers' must be"),
    "sequence-item": ('"pre_tokenizer"', _seq("7"), "must be an object with a string 'type'"),
    "split-pattern": ('"pre_tokenizer"', '{"type": "Split", "pattern": "x", "behavior": "Isolated", '
                                         '"invert": false}', "'pattern' must be"),
    "split-regex": ('"pre_tokenizer"', '{"type": "Split", "pattern": {"Regex": 1}, "behavior": "Isolated"}',
                    "'pattern' must be"),
    "split-both": ('"pre_tokenizer"', '{"type": "Split", "pattern": {"Regex": "a", "String": "b"}, '
                                      '"behavior": "Isolated"}', "'pattern' must be"),
    "split-behavior": ('"pre_tokenizer"', '{"type": "Split", "pattern": {"Regex": "a"}, "behavior": null}',
                       "'behavior' must be a string"),
    "split-invert": ('"pre_tokenizer"', '{"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Isolated", '
                                        '"invert": "no"}', "'invert' must be true or false"),
    "bytelevel-flag": ('"pre_tokenizer"', '{"type": "ByteLevel", "add_prefix_space": 0}',
                       "'add_prefix_space' must be true or false"),
    "digits-flag": ('"pre_tokenizer"', '{"type": "Digits", "individual_digits": "yes"}',
                    "'individual_digits' must be true or false"),
    "normalizer": ('"normalizer"', '"NFC"', "the normalizer must be null or an object"),
    "normalizer-seq": ('"normalizer"', '{"type": "Sequence", "normalizers": {}}', "'normalizers' must be a list"),
}


@pytest.mark.parametrize("key, value, needle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_declarations_are_one_clear_error(key, value, needle):
    tok = _tokenizer_json("null", SHIPPED[-1][2])
    tok[json.loads(key)] = json.loads(value)
    with pytest.raises(InputError) as info:
        bpe_pre.pre_tokenizer_name(tok, "t.json")
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [1, "true", None])
def test_malformed_ignore_merges_is_one_clear_error(value):
    tok = _tokenizer_json("null", SHIPPED[-1][2])
    tok["model"]["ignore_merges"] = value
    with pytest.raises(InputError, match="the BPE model's 'ignore_merges' must be true or false"):
        bpe_pre.pre_tokenizer_name(tok)


def test_deeply_nested_sequences_are_one_clear_error_even_deep_in_the_stack():
    # Nesting json.loads accepts, read deep inside the stack: no RecursionError may escape.
    text = '{"type": "Sequence", "pretokenizers": [' * 300 + '{"type": "ByteLevel"}' + ']}' * 300
    pre = json.loads(text)

    def deep(n):
        return deep(n - 1) if n else bpe_pre.pre_tokenizer_name({"model": {"type": "BPE"}, "pre_tokenizer": pre})

    with pytest.raises(InputError, match="nested more than"):
        deep(600)


def test_control_characters_of_a_file_stay_escaped_in_messages():
    with pytest.raises(InputError) as info:
        bpe_pre.pre_tokenizer_name(_tokenizer_json("null", '{"type": "Evil\\u001b[2J\\n"}'))
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


def test_the_table_check_catches_two_rows_for_one_declaration():
    bpe_pre._check_table(bpe_pre.PRE_TOKENIZERS)
    twice = bpe_pre.PRE_TOKENIZERS + (("other", bpe_pre.PRE_TOKENIZERS[2][1], True),)
    with pytest.raises(AssertionError, match="other and qwen2"):
        bpe_pre._check_table(twice)


def test_the_tokenizers_library_serializes_these_declarations(tmp_path):
    """The keys and defaults read here are the ones the tokenizers library writes."""
    tokenizers = pytest.importorskip("tokenizers")
    pre, norm, models = tokenizers.pre_tokenizers, tokenizers.normalizers, tokenizers.models
    byte = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    made = {
        "llama-bpe": (None, pre.Sequence([pre.Split(tokenizers.Regex(bpe_pre.CL100K), "isolated"), byte]), True),
        "dbrx": (None, pre.Sequence([pre.Split(tokenizers.Regex(bpe_pre.CL100K), "isolated"), byte]), False),
        "qwen2": (norm.NFC(), pre.Sequence([pre.Split(tokenizers.Regex(bpe_pre.QWEN2), "isolated"), byte]), False),
        "smollm": (None, pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]),
                   False),
        "gpt-2": (None, pre.ByteLevel(add_prefix_space=False), False),
    }
    for name, (normalizer, pre_tokenizer, ignore_merges) in made.items():
        tok = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
        tok.pre_tokenizer = pre_tokenizer
        if normalizer is not None:
            tok.normalizer = normalizer
        assert bpe_pre.pre_tokenizer_name(json.loads(tok.to_str())) == name
