"""Byte-level BPE (``gpt2``) folders -> GGUF: the special vocabulary llama.cpp's converter writes.

llama.cpp's ``_set_vocab_gpt2`` ends with ``gguf.SpecialVocab(folder, load_merges=True)
.add_to_gguf(writer)``: special ids, add-bos/eos/sep flags, chat template and merges. A
tiny Llama 3.1 Instruct-style folder (a TemplateProcessing post-processor adding
<|begin_of_text|>, <|eot_id|> as its eos, a list-valued ``eos_token_id``) and a Qwen2.5
Instruct-style one (``ByteLevel`` post-processor, pad token, ``model_type`` qwen2) are
converted; every key gguf-py's own ``SpecialVocab`` writes for the folder is in the file
with its value (the oracle: ``special_vocab_oracle``), no key is written twice, and when
llama.cpp's Python binding is at hand it adds the bos by the file's flag and reads the
chat template.
"""

import json
import logging
import os
import subprocess

import pytest

from nbwoq.command.cli import main
from nbwoq.command.demo_model import write_checkpoint
from nbwoq.formats import bpe_pre

from cli_helpers import TINY
from special_vocab_oracle import expected, oracle

gguf = pytest.importorskip("gguf")

N_VOCAB = 300
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] }}<|eot_id|>{% endfor %}")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def _alphabet():
    """GPT-2's byte-to-unicode table: the 256 byte tokens of a byte-level vocabulary."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in keep]
    table = dict(zip(keep, map(chr, keep)))
    table.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return [table[b] for b in range(256)]


def _special(text):
    return {"SpecialToken": {"id": text, "type_id": 0}}


def _seq(name):
    return {"Sequence": {"id": name, "type_id": 0}}


FAMILIES = {
    "llama3": dict(
        model_type="llama", added=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                   "<|end_header_id|>", "<|eot_id|>"],
        pre=dict(type="Sequence", pretokenizers=[
            dict(type="Split", pattern=dict(Regex=bpe_pre.CL100K), behavior="Isolated", invert=False), BYTE_LEVEL]),
        normalizer=None, ignore_merges=True, pre_name="llama-bpe",
        post=dict(type="Sequence", processors=[
            dict(BYTE_LEVEL, trim_offsets=False, use_regex=True),
            dict(type="TemplateProcessing", single=[_special("<|begin_of_text|>"), _seq("A")],
                 pair=[_special("<|begin_of_text|>"), _seq("A"), _special("<|begin_of_text|>"), _seq("B")],
                 special_tokens={})]),
        tok_cfg=dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=TEMPLATE,
                     model_max_length=131072, tokenizer_class="PreTrainedTokenizerFast"),
        config=dict(bos_token_id=260, eos_token_id=[261, 264]),
        want=dict(bos=260, eos=264, add_bos=True)),
    "qwen2": dict(
        model_type="qwen2", added=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        pre=dict(type="Sequence", pretokenizers=[
            dict(type="Split", pattern=dict(Regex=bpe_pre.QWEN2), behavior="Isolated", invert=False), BYTE_LEVEL]),
        normalizer=dict(type="NFC"), ignore_merges=False, pre_name="qwen2",
        post=dict(BYTE_LEVEL, trim_offsets=False),
        tok_cfg=dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                     add_prefix_space=False, chat_template=TEMPLATE.replace("{{ bos_token }}", ""),
                     errors="replace", tokenizer_class="Qwen2Tokenizer"),
        config=dict(bos_token_id=260, eos_token_id=[262, 260]),
        want=dict(bos=260, eos=262, add_bos=False)),
}
MERGES = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["i", "n"]]


def _write(folder, name, value):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)


def _folder(root, family):
    spec = FAMILIES[family]
    src = write_checkpoint(os.path.join(root, family), dtype="float32", **dict(TINY, vocab_size=N_VOCAB))
    vocab = {t: i for i, t in enumerate(_alphabet())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    first_added = 260  # right after the merged tokens
    assert len(vocab) == first_added
    added = [dict(id=first_added + i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                  special=True) for i, t in enumerate(spec["added"])]
    _write(src, "tokenizer.json", dict(
        version="1.0", truncation=None, padding=None, added_tokens=added, normalizer=spec["normalizer"],
        pre_tokenizer=spec["pre"], post_processor=spec["post"], decoder=BYTE_LEVEL,
        model=dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix=None, end_of_word_suffix=None,
                   fuse_unk=False, byte_fallback=False, ignore_merges=spec["ignore_merges"], vocab=vocab,
                   merges=MERGES)))
    _write(src, "tokenizer_config.json", spec["tok_cfg"])
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(spec["config"], model_type=spec["model_type"])
    _write(src, "config.json", config)
    return src


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """family -> (folder, the file's fields, oracle keys, newest oracle, logged warnings)."""
    root = str(tmp_path_factory.mktemp("gpt2-special"))
    out = {}
    for family in FAMILIES:
        src = _folder(root, family)
        path = os.path.join(root, f"{family}.gguf")
        records = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append
        logging.getLogger().addHandler(handler)
        try:
            assert main(["quantize", src, path, "--type", "F32", "--quiet"]) == 0
        finally:
            logging.getLogger().removeHandler(handler)
        out[family] = (src, gguf.GGUFReader(path).fields, path, [r.getMessage() for r in records])
    keys, newest = oracle([(out[f][0], None, True) for f in FAMILIES])
    return {f: out[f] + (k, newest) for f, k in zip(FAMILIES, keys)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_file_holds_gguf_py_s_special_vocabulary(converted, family):
    src, fields, _, warnings, keys, newest = converted[family]
    assert "error" not in keys, keys
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == FAMILIES[family]["pre_name"]
    want = expected(keys, src, newest)
    assert "tokenizer.chat_template" in want and "tokenizer.ggml.add_bos_token" in want
    for key, (value, _) in want.items():
        assert key in fields, key
        assert fields[key].contents() == value, key
    # nothing of the special vocabulary beyond gguf-py's, and no key written twice
    ours = {k for k in fields if k.startswith("tokenizer.") and k.endswith(("_token_id", "_token", "chat_template"))}
    assert ours == {k for k in want if k != "tokenizer.ggml.merges"}
    assert not [w for w in warnings if "Duplicated key" in w], warnings


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ids_flags_and_template_spelled_out(converted, family):
    _, fields, _, _, _, _ = converted[family]
    want = FAMILIES[family]["want"]

    def get(key):
        return fields[key].contents() if key in fields else None

    assert get("tokenizer.ggml.bos_token_id") == want["bos"]
    assert get("tokenizer.ggml.eos_token_id") == want["eos"]  # tokenizer_config.json's: a list is no id
    assert get("tokenizer.ggml.add_bos_token") is want["add_bos"]
    assert get("tokenizer.chat_template") == FAMILIES[family]["tok_cfg"]["chat_template"]
    assert get("tokenizer.ggml.merges") == [" ".join(m) for m in MERGES]


_LLAMA_CPP = r"""
import json, sys
import llama_cpp
out = {}
for path in json.loads(sys.argv[1]):
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    out[path] = dict(ids=llm.tokenize(b"the in", add_bos=True, special=False),
                     template=llm.metadata.get("tokenizer.chat_template"), bos=llm.token_bos(), eos=llm.token_eos())
print(json.dumps(out))
"""


def test_llama_cpp_adds_bos_by_the_flag_and_reads_the_template(converted):
    from cli_helpers import llama_cpp_python

    python = llama_cpp_python()
    paths = {family: converted[family][2] for family in FAMILIES}
    done = subprocess.run([python, "-c", _LLAMA_CPP, json.dumps(list(paths.values()))], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for family, path in paths.items():
        want = FAMILIES[family]["want"]
        ids = got[path]["ids"]
        assert (ids[0] == want["bos"]) is want["add_bos"], (family, ids)
        assert got[path]["eos"] == want["eos"], family
        assert got[path]["template"] == FAMILIES[family]["tok_cfg"]["chat_template"], family


def test_merges_with_spaces_are_written_as_gguf_py_writes_them(tmp_path):
    """transformers >= 4.45 writes merges as pairs so that a half may hold a space; gguf-py
    writes that space as U+0120 (space + 256), the GGUF form splitting on the one space."""
    src = _folder(str(tmp_path), "qwen2")
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    tok["model"]["merges"] = MERGES + [["a b", "c"]]
    _write(src, "tokenizer.json", tok)
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", src, out, "--type", "F32", "--quiet"]) == 0
    (keys,), _ = oracle([(src, None, True)])
    merges = gguf.GGUFReader(out).fields["tokenizer.ggml.merges"].contents()
    assert merges == keys["tokenizer.ggml.merges"][0] and merges[-1] == "a\u0120b c"


@pytest.mark.parametrize("post, needle", [
    ([1], "post_processor must be an object"),
    (dict(type="TemplateProcessing", single=[dict(SpecialToken=dict(id=3)), dict(Sequence=dict(id="A"))]),
     "post_processor SpecialToken must be an object with a string 'id'"),
], ids=["post-not-object", "special-id-not-string"])
def test_malformed_side_file_is_one_error_line_and_no_file(tmp_path, capsys, post, needle):
    src = _folder(str(tmp_path), "llama3")
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    tok["post_processor"] = post
    _write(src, "tokenizer.json", tok)
    out = tmp_path / "m.gguf"
    capsys.readouterr()
    assert main(["quantize", src, str(out), "--type", "F32", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbwoq: error:") and needle in err[0], err
    assert not out.exists() and not os.path.exists(str(out) + ".partial")
