"""SentencePiece tokenizers (``tokenizer.model``) of Hugging Face folders -> GGUF's ``llama`` tokenizer.

Each family (Llama, Gemma 2, Gemma 3, Phi-3) gets a tiny BPE SentencePiece model trained here on a
fixed text (``sentencepiece_files.train``, byte fallback, identity normalization as the
real models use) and the side files its real repositories have, beside a tiny random
model. The file must hold

* the arrays llama.cpp's converter writes, derived here from SentencePiece's own API
  (not from nbwoq's reader) and the side files by llama.cpp's rules;
* a tokenizer transformers' GGUF loader rebuilds into one that encodes text as
  SentencePiece does, and the source model's logits;
* when llama.cpp's Python binding is at hand (``$NBWOQ_LLAMA_CPP_PYTHON``, or the
  integration venv), a model llama.cpp loads, tokenizes as SentencePiece does, and runs
  with the source model's logits (the Llama is given Llama 3 rope scaling, so its
  ``rope_freqs.weight`` is checked by llama.cpp itself).
"""

import functools
import json
import os
import subprocess

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import bpe_pre

from cli_helpers import llama_cpp_python
from sentencepiece_files import train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("sentencepiece")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
N_PIECES = 420
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
STRINGS = ["Hello world", "The quick brown fox, 12345 times.", "two  spaces and\nnewline\tand tab",
           "Über naïve café 你好 🙂 \u0100\u0101", "llama.cpp reads GGUF files"]
LEADING = [" leading space", "   three spaces"]


def _write(folder, name, value):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)


def _decoder(entries):
    return {str(i): dict(content=text, special=special, lstrip=False, rstrip=False, normalized=False,
                         single_word=False) for i, text, special in entries}


def _llama(folder):
    sp = train(folder, N_PIECES, control_symbols=["<ctl>"], user_defined_symbols=["<mark>"])
    specials = [(0, "<unk>", True), (1, "<s>", True), (2, "</s>", True)]
    _write(folder, "tokenizer_config.json", dict(
        add_bos_token=True, add_eos_token=False, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=None,
        added_tokens_decoder=_decoder(specials), chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
        tokenizer_class="LlamaTokenizer"))
    # what a Llama 2 tokenizer.json holds for the converter: added tokens and the bos template
    _write(folder, "tokenizer.json", dict(
        added_tokens=[dict(id=i, content=t, special=s) for i, t, s in specials],
        post_processor=dict(type="TemplateProcessing", single=[dict(SpecialToken=dict(id="<s>", type_id=0)),
                                                               dict(Sequence=dict(id="A", type_id=0))]),
        model=dict(type="BPE", byte_fallback=True, vocab={}, merges=[])))
    config = transformers.LlamaConfig(**SMALL, vocab_size=N_PIECES, bos_token_id=1, eos_token_id=2,
                                      rope_parameters=LLAMA3_ROPE, max_position_embeddings=512,
                                      tie_word_embeddings=False)
    added = dict(decoder=specials, phi3=False)
    return sp, config, added


def _gemma(folder, config_class="Gemma3TextConfig"):
    sp = train(folder, N_PIECES, pad_id=0, eos_id=1, bos_id=2, unk_id=3, add_dummy_prefix=False,
               user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<unused0>", "\u2581\u2581"])
    decoder = [(0, "<pad>", True), (1, "<eos>", True), (2, "<bos>", True), (3, "<unk>", True),
               (sp.PieceToId("<start_of_turn>"), "<start_of_turn>", True),
               (sp.PieceToId("<end_of_turn>"), "<end_of_turn>", True),
               (sp.PieceToId("<unused0>"), "<unused0>", False),  # looks special: llama.cpp makes it control
               (sp.PieceToId("\u2581\u2581"), "\u2581\u2581", False)]  # user-defined: written as two spaces
    _write(folder, "tokenizer_config.json", dict(
        add_bos_token=True, add_eos_token=False, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", added_tokens_decoder=_decoder(decoder), tokenizer_class="GemmaTokenizer"))
    config = getattr(transformers, config_class)(**SMALL, head_dim=256, vocab_size=N_PIECES, bos_token_id=2,
                                                 eos_token_id=1, pad_token_id=0)
    return sp, config, dict(decoder=decoder, phi3=False)


def _phi3(folder):
    sp = train(folder, N_PIECES)
    n = N_PIECES
    _write(folder, "added_tokens.json",
           {"<|endoftext|>": n, "<|assistant|>": n + 1, "<|end|>": n + 2, "<|user|>": n + 3})
    decoder = [(0, "<unk>", True), (1, "<s>", True), (2, "</s>", False), (n, "<|endoftext|>", True),
               (n + 1, "<|assistant|>", True), (n + 2, "<|end|>", False), (n + 3, "<|user|>", False)]
    json_added = [(n + 2, "<|end|>", True)]  # tokenizer.json has the last word for Phi-3
    _write(folder, "tokenizer_config.json", dict(
        add_bos_token=False, add_eos_token=False, bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>",
        pad_token="<|endoftext|>", added_tokens_decoder=_decoder(decoder), tokenizer_class="LlamaTokenizer"))
    _write(folder, "tokenizer.json", dict(
        added_tokens=[dict(id=i, content=t, special=s) for i, t, s in decoder[:3] + decoder[3:5] + json_added],
        model=dict(type="BPE", byte_fallback=True, vocab={}, merges=[])))
    config = transformers.Phi3Config(**SMALL, vocab_size=n + 12, bos_token_id=1, eos_token_id=2, pad_token_id=n + 3)
    return sp, config, dict(decoder=decoder, json_added=json_added, added_json=True, phi3=True)


FAMILIES = {"llama": _llama, "gemma2": functools.partial(_gemma, config_class="Gemma2Config"), "gemma3": _gemma,
            "phi3": _phi3}


@pytest.fixture(scope="module", params=list(FAMILIES))
def converted(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    folder = str(root / f"tiny-{family}")
    os.makedirs(folder)
    sp, config, added = FAMILIES[family](folder)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    out = str(root / "m.gguf")
    assert main(["quantize", folder, out, "--type", "F32", "--quiet"]) == 0
    return dict(family=family, folder=folder, sp=sp, config=config, added=added, model=model, out=out)


def _expected_arrays(c):
    """tokens, scores, types as llama.cpp's converter derives them, from SentencePiece's API."""
    sp, n, added = c["sp"], c["config"].vocab_size, c["added"]
    tokens, scores, types = [f"[PAD{i}]" for i in range(n)], [-10000.0] * n, [5] * n
    for i in range(sp.vocab_size()):
        kind = 2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 5 if sp.IsUnused(i) else 6 if sp.IsByte(i) else 1
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), kind
    if added.get("added_json"):
        with open(os.path.join(c["folder"], "added_tokens.json")) as f:
            for text, i in json.load(f).items():
                tokens[i], scores[i], types[i] = text, -1000.0, 4
    phi3 = added["phi3"]
    for i, text, special in added["decoder"] + added.get("json_added", []):
        looks = text.startswith("<|") or text.startswith("<unused")
        control = special or (looks and not phi3)
        tokens[i] = text if control or phi3 else text.replace("\u2581", " ")
        scores[i], types[i] = -1000.0, 3 if control else 4
    return tokens, scores, types


def test_arrays_are_llama_cpp_s(converted):
    fields = gguf.GGUFReader(converted["out"]).fields
    tokens, scores, types = _expected_arrays(converted)
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.pre"].contents() == "default"
    assert fields["tokenizer.ggml.tokens"].contents() == tokens
    np.testing.assert_array_equal(np.array(fields["tokenizer.ggml.scores"].contents(), dtype=np.float32),
                                  np.array(scores, dtype=np.float32))
    assert fields["tokenizer.ggml.token_type"].contents() == types
    assert {1, 3, 6} <= set(types)  # normal, control, byte (an unknown listed as special is control)


def test_special_ids_flags_and_template(converted):
    fields = gguf.GGUFReader(converted["out"]).fields
    get = lambda key: fields[key].contents() if key in fields else None  # noqa: E731
    family = converted["family"]
    want = {"llama": dict(bos=1, eos=2, unknown=0, padding=None, add_bos=True, space=None),
            # no tokenizer.json: the ids come from config.json alone
            "gemma3": dict(bos=2, eos=1, unknown=None, padding=0, add_bos=True, space=False),
            "gemma2": dict(bos=2, eos=1, unknown=None, padding=0, add_bos=True, space=False),
            # eos and pad found by content among tokenizer.json's added tokens come before config.json's ids
            "phi3": dict(bos=1, eos=N_PIECES, unknown=0, padding=N_PIECES, add_bos=False, space=None)}[family]
    for key in ("bos", "eos", "unknown", "padding"):
        assert get(f"tokenizer.ggml.{key}_token_id") == want[key], key
    assert get("tokenizer.ggml.add_bos_token") is want["add_bos"]
    assert get("tokenizer.ggml.add_eos_token") is False
    assert get("tokenizer.ggml.add_space_prefix") is want["space"]
    template = get("tokenizer.chat_template")
    assert (template is not None) == (family == "llama")


def _gguf_tokenizer(out):
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(out), gguf_file=os.path.basename(out))


def _bos(c, tokenizer_adds=True):
    return [c["config"].bos_token_id] if tokenizer_adds else []


def test_transformers_gguf_tokenizer_encodes_like_sentencepiece(converted):
    sp = converted["sp"]
    tok = _gguf_tokenizer(converted["out"])
    for text in STRINGS:
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text
    if converted["family"].startswith("gemma"):
        text = "<start_of_turn>user\nhi  there<end_of_turn>"
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    if converted["family"] == "phi3":
        assert tok("<|assistant|>", add_special_tokens=False).input_ids == [N_PIECES + 1]


def test_transformers_loads_the_model_with_its_tokenizer(converted):
    if converted["family"] == "llama":
        pytest.skip("transformers' GGUF loader ignores rope_freqs (test_gguf_families.py patches it in)")
    out = converted["out"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(out), gguf_file=os.path.basename(out),
                                                               dtype=torch.float32).eval()
    x = torch.tensor([converted["sp"].encode(STRINGS[1])])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, converted["model"](x).logits, rtol=1e-5, atol=1e-5)


# -- llama.cpp itself ---------------------------------------------------------------------

_LLAMA_CPP = r"""
import json, sys
import llama_cpp
path, request = sys.argv[1], json.loads(sys.argv[2])
llm = llama_cpp.Llama(model_path=path, n_ctx=128, logits_all=True, verbose=False, n_threads=1)
ids = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in request["texts"]]
llm.eval(request["eval"])
print(json.dumps(dict(ids=ids, logits=[list(map(float, row)) for row in llm.scores[:len(request["eval"])]])))
"""


def test_llama_cpp_tokenizes_and_runs_it(converted):
    python = llama_cpp_python()
    sp, family = converted["sp"], converted["family"]
    evaluate = [converted["config"].bos_token_id] + sp.encode(STRINGS[1] + " " + STRINGS[4])
    request = dict(texts=STRINGS + LEADING, eval=evaluate)
    done = subprocess.run([python, "-c", _LLAMA_CPP, converted["out"], json.dumps(request)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # llama.cpp adds bos by the file's add_bos flag
    add_bos = family != "phi3"
    for text, ids in zip(request["texts"], got["ids"]):
        assert ids == _bos(converted, add_bos) + sp.encode(text), text
    with torch.no_grad():
        ref = converted["model"](torch.tensor([evaluate])).logits[0].numpy()
    # summation order, and for Gemma ggml's float16 GELU table: a little of the logits' range;
    # rope factors of 1 instead of Llama 3's move the Llama's by 1e-2 of it
    tol = 2e-3 if family.startswith("gemma") else 3e-4
    np.testing.assert_allclose(np.array(got["logits"], dtype=np.float32), ref, rtol=0, atol=tol * np.abs(ref).max())


# -- what is refused ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("llama-src") / "tiny-llama")
    os.makedirs(folder)
    _, config, _ = _llama(folder)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


def _variant(src, dst, remove=(), **files):
    import shutil

    shutil.copytree(src, dst)
    for name in remove:
        os.remove(os.path.join(dst, name))
    for name, value in files.items():
        with open(os.path.join(dst, name.replace("__", ".")), "w", encoding="utf-8") as f:
            f.write(value if isinstance(value, str) else json.dumps(value))
    return str(dst)


def _one_error(capsys, argv, out):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nbwoq: error:"), err
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".partial")
    return err


def test_sentencepiece_tokenizer_json_without_its_model_is_refused(llama_folder, tmp_path, capsys):
    """llama.cpp's converter needs tokenizer.model for these too (its tokenizer.json fallback
    for Llama scores every piece alike); so does nbwoq, in one line."""
    src = _variant(llama_folder, tmp_path / "src", remove=["tokenizer.model"])
    out = tmp_path / "m.gguf"
    err = _one_error(capsys, ["quantize", src, str(out), "--type", "Q8_0"], out)
    assert "tokenizer.json" in err and "SentencePiece vocabulary ('BPE' with byte fallback)" in err
    assert "tokenizer.model" in err


@pytest.mark.parametrize("files, needle", [
    (dict(added_tokens__json={"<x>": "5"}), "has id '5', not a non-negative integer"),
    (dict(added_tokens__json=[1, 2]), "added_tokens.json': the file must be an object"),
    (dict(tokenizer_config__json=dict(added_tokens_decoder={"1e3": dict(content="x")})), "entry '1e3'"),
    (dict(tokenizer_config__json=dict(added_tokens_decoder={"7": dict(content=7)})), "string 'content'"),
    (dict(tokenizer_config__json=dict(chat_template=5)), "chat_template must be a string"),
    (dict(tokenizer__json=dict(added_tokens=[dict(id=-1, content="x")])), "added_tokens must be a list"),
    (dict(tokenizer_config__json="{not json"), "not a valid tokenizer_config.json"),
], ids=["added-id-string", "added-not-object", "decoder-key", "decoder-content", "chat-template", "json-added-id",
        "config-not-json"])
def test_malformed_side_files_are_one_error_line(llama_folder, tmp_path, capsys, files, needle):
    src = _variant(llama_folder, tmp_path / "src", **files)
    out = tmp_path / "m.gguf"
    assert needle in _one_error(capsys, ["quantize", src, str(out), "--type", "Q8_0"], out)


def test_phi4_style_gpt2_tokenizer_wins_over_tokenizer_model(tmp_path):
    """llama.cpp's Phi-3 converter reads a GPT2Tokenizer's tokenizer.json (Phi-4) even
    beside a tokenizer.model; a byte-level tokenizer.json without BPE byte fallback."""
    folder = str(tmp_path / "phi")
    os.makedirs(folder)
    _, config, _ = _phi3(folder)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    _write(folder, "tokenizer_config.json", dict(tokenizer_class="GPT2Tokenizer"))
    split = dict(type="Split", pattern=dict(Regex=bpe_pre.CL100K), behavior="Isolated", invert=False)
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False)
    _write(folder, "tokenizer.json", dict(added_tokens=[], model=dict(type="BPE", vocab={"a": 0, "b": 1, "ab": 2},
                                                                        merges=["a b"]),
                                          pre_tokenizer=dict(type="Sequence", pretokenizers=[split, byte_level])))
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", folder, out, "--type", "F32", "--quiet"]) == 0
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "dbrx"  # tiktoken's cl100k split, as Phi-4 ships it
    assert fields["tokenizer.ggml.tokens"].contents()[:3] == ["a", "b", "ab"]
