"""``hf_vocab``'s special vocabulary: the keys gguf-py's own ``SpecialVocab`` writes.

Each folder holds the side files of a real family (Llama 3 / 3.1 Instruct, Qwen2.5,
SmolLM2, Llama 2, a RoBERTa- and a BERT-style post-processor, chat templates in their
own files, a multimodal ``text_config``), on a small vocabulary; ``write_special_vocab``
must write exactly the keys and values ``SpecialVocab(folder).add_to_gguf`` writes (the
oracle runs gguf-py itself, see ``special_vocab_oracle``). Malformed side files are one
``InputError``.
"""

import json
import os

import pytest

from nbwoq.formats import hf_vocab
from nbwoq.formats.errors import InputError

from special_vocab_oracle import expected, oracle, writer_keys

gguf = pytest.importorskip("gguf")

N_VOCAB = 300
TEMPLATE = "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>{% endfor %}"


def _special(text):
    return {"SpecialToken": {"id": text, "type_id": 0}}


def _seq(name):
    return {"Sequence": {"id": name, "type_id": 0}}


def _template(single, pair):
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": {}}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
LLAMA3_ADDED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]
LLAMA3_POST = {"type": "Sequence", "processors": [
    BYTE_LEVEL, _template([_special("<|begin_of_text|>"), _seq("A")],
                          [_special("<|begin_of_text|>"), _seq("A"), _special("<|begin_of_text|>"), _seq("B")])]}
QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# name -> (added tokens from id 256, post_processor, tokenizer_config.json or None, config.json ids,
#          other files, only a gguf-py with the newer rules computes it as llama.cpp now does)
FOLDERS = {
    "llama3-base": (LLAMA3_ADDED, LLAMA3_POST,
                    dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", model_max_length=131072),
                    dict(bos_token_id=256, eos_token_id=257), {}, False),
    "llama3.1-instruct": (LLAMA3_ADDED, LLAMA3_POST,
                          dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=TEMPLATE),
                          dict(bos_token_id=256, eos_token_id=[257, 259]), {}, False),
    "qwen2.5-instruct": (QWEN_ADDED, BYTE_LEVEL,
                         dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                              add_prefix_space=False, chat_template=TEMPLATE),
                         dict(bos_token_id=256, eos_token_id=258), {}, False),
    "qwen-list-eos": (QWEN_ADDED, BYTE_LEVEL, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
                      dict(bos_token_id=[256], eos_token_id=[258, 256], pad_token_id=256), {}, False),
    "smollm2-instruct": (QWEN_ADDED, None,
                         dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
                              unk_token="<|endoftext|>", chat_template=TEMPLATE),
                         dict(bos_token_id=1, eos_token_id=2), {}, False),
    "llama2-added-token-dicts": (["<unk>", "<s>", "</s>"],
                                 _template([_special("<s>"), _seq("A")],
                                           [_special("<s>"), _seq("A"), _special("<s>"), _seq("B")]),
                                 dict(add_bos_token=True, add_eos_token=False,
                                      bos_token=dict(__type="AddedToken", content="<s>", lstrip=False),
                                      eos_token=dict(__type="AddedToken", content="</s>"), unk_token="<unk>",
                                      pad_token=None),
                                 dict(bos_token_id=257, eos_token_id=258), {}, False),
    "template-ends-with-other-eos": (LLAMA3_ADDED,
                                     _template([_special("<|begin_of_text|>"), _seq("A"), _special("<|end_of_text|>")],
                                               []),
                                     dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"), {}, {}, False),
    "roberta": (["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                {"type": "RobertaProcessing", "sep": ["</s>", 258], "cls": ["<s>", 256], "trim_offsets": True,
                 "add_prefix_space": False},
                dict(bos_token="<s>", eos_token="</s>", mask_token="<mask>", pad_token="<pad>", unk_token="<unk>"),
                dict(pad_token_id=257), {}, False),
    "bert-pair-sep": (["[CLS]", "[SEP]", "[PAD]", "[MASK]"],
                      _template([_special("[CLS]"), _seq("A"), _special("[SEP]")],
                                [_special("[CLS]"), _seq("A"), _special("[SEP]"), _seq("B"), _special("[SEP]")]),
                      dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]"), {}, {},
                      False),
    "no-tokenizer-config": (LLAMA3_ADDED, LLAMA3_POST, None, dict(bos_token_id=256, eos_token_id=257, pad_token_id=5),
                            {}, False),
    "jinja-templates": (QWEN_ADDED, BYTE_LEVEL, dict(eos_token="<|im_end|>"), dict(eos_token_id=258),
                        {"chat_template.jinja": TEMPLATE,
                         "additional_chat_templates/tool_use.jinja": "{{ tools }}" + TEMPLATE}, False),
    "chat-template-json": (QWEN_ADDED, None, dict(eos_token="<|im_end|>"), {},
                           {"chat_template.json": json.dumps(dict(chat_template=TEMPLATE))}, False),
    "text-config-ids": (QWEN_ADDED, None, dict(eos_token="<|im_end|>"),
                        dict(text_config=dict(bos_token_id=256, pad_token_id=257)), {}, False),
    "ids-past-the-vocabulary": (QWEN_ADDED + [(N_VOCAB + 5, "<|far|>")], None,
                                dict(eos_token="<|far|>", pad_token="<|im_end|>"),
                                dict(bos_token_id=N_VOCAB, eos_token_id=N_VOCAB - 1, pad_token_id=3), {}, False),
    # newer llama.cpp: the post-processor wins over add_bos_token, and its first special
    # token is the bos (and cls) a tokenizer_config.json without bos_token lacks
    "post-processor-wins": (LLAMA3_ADDED, LLAMA3_POST,
                            dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos_token=False,
                                 add_eos_token=True), {}, {}, True),
    "first-special-is-bos": (LLAMA3_ADDED, LLAMA3_POST, dict(eos_token="<|eot_id|>"), {}, {}, True),
}


def _write(folder, name, value):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(value if isinstance(value, str) else json.dumps(value))


def _folder(root, name):
    added, post, tok_cfg, config, files, _ = FOLDERS[name]
    folder = os.path.join(root, name)
    os.makedirs(folder)
    vocab = {chr(0x100 + i) if i < 200 else f"t{i}": i for i in range(256)}
    _write(folder, "tokenizer.json", dict(
        version="1.0", added_tokens=[dict(id=t[0], content=t[1], special=True) if isinstance(t, tuple)
                                     else dict(id=256 + i, content=t, special=True) for i, t in enumerate(added)],
        normalizer=None, pre_tokenizer=BYTE_LEVEL, post_processor=post, decoder=BYTE_LEVEL,
        model=dict(type="BPE", vocab=vocab, merges=[])))
    if tok_cfg is not None:
        _write(folder, "tokenizer_config.json", tok_cfg)
    _write(folder, "config.json", dict(config, model_type="llama", vocab_size=N_VOCAB))
    for rel, text in files.items():
        _write(folder, rel, text)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("special-vocab"))
    paths = {name: _folder(root, name) for name in FOLDERS}
    keys, newest = oracle([(paths[name], N_VOCAB, False) for name in FOLDERS])
    return {name: (paths[name], k) for name, k in zip(FOLDERS, keys)}, newest


def _ours(folder):
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    writer = gguf.GGUFWriter(None, "llama")
    hf_vocab.write_special_vocab(writer, folder, config, N_VOCAB)
    return writer_keys(writer)


@pytest.mark.parametrize("name", list(FOLDERS))
def test_special_vocab_is_gguf_py_s(folders, name):
    by_name, newest = folders
    if FOLDERS[name][-1] and not newest:
        pytest.skip("needs llama.cpp's newer gguf-py as the oracle: set NBWOQ_GGUF_PY to a llama.cpp gguf-py folder")
    folder, keys = by_name[name]
    assert "error" not in keys, keys
    assert _ours(folder) == expected(keys, folder, newest)


def test_the_families_get_what_llama_cpp_runs_them_with(folders):
    """Spelled out for the two families the oracle comparison is about (so a change of the
    oracle itself shows): Llama 3.1 Instruct adds its bos, ends turns with <|eot_id|> and
    has its template; Qwen2.5's list-free ids, no bos added, pad from its config."""
    by_name, _ = folders
    llama = _ours(by_name["llama3.1-instruct"][0])
    assert llama["tokenizer.ggml.bos_token_id"][0] == 256 and llama["tokenizer.ggml.eos_token_id"][0] == 259
    assert llama["tokenizer.ggml.add_bos_token"][0] is True and llama["tokenizer.ggml.add_eos_token"][0] is False
    assert llama["tokenizer.ggml.add_sep_token"][0] is False and llama["tokenizer.chat_template"][0] == TEMPLATE
    qwen = _ours(by_name["qwen-list-eos"][0])
    assert qwen["tokenizer.ggml.eos_token_id"][0] == 258 and qwen["tokenizer.ggml.padding_token_id"][0] == 256
    assert "tokenizer.ggml.bos_token_id" not in qwen and qwen["tokenizer.ggml.add_bos_token"][0] is False
    eot = _ours(by_name["template-ends-with-other-eos"][0])
    assert eot["tokenizer.ggml.eos_token_id"][0] == 257 and eot["tokenizer.ggml.eot_token_id"][0] == 259


@pytest.mark.parametrize("tok_json, tok_cfg, needle", [
    (dict(post_processor=[1]), None, "post_processor must be an object"),
    (dict(post_processor=dict(type="Sequence", processors="x")), None, "post_processor processors must be a list"),
    (dict(post_processor=dict(type="Sequence", processors=[3])), None, "processors must be objects"),
    (dict(post_processor=_template("x", [])), None, "TemplateProcessing single must be a list"),
    (dict(post_processor=_template([5, _seq("A")], [])), None, "template entries must be objects"),
    (dict(post_processor=_template([{"SpecialToken": {"id": 7}}, _seq("A")], [])), None, "string 'id'"),
    (dict(post_processor={"type": "RobertaProcessing", "cls": "<s>"}), dict(bos_token="<s>"),
     "RobertaProcessing cls must be a list"),
    (dict(added_tokens=[dict(id="1", content="<s>")]), None, "added_tokens must be a list"),
    (dict(), [1], "tokenizer_config.json': the file must be an object"),
    (dict(), dict(chat_template=dict(a=1)), "chat_template must be a string"),
], ids=["post-not-object", "processors-not-list", "processor-not-object", "single-not-list", "entry-not-object",
        "special-id-not-string", "roberta-cls", "added-id", "config-not-object", "chat-template"])
def test_malformed_side_files_are_one_input_error(tmp_path, tok_json, tok_cfg, needle):
    _write(str(tmp_path), "tokenizer.json", dict(dict(added_tokens=[], model=dict(type="BPE", vocab={})), **tok_json))
    if tok_cfg is not None:
        _write(str(tmp_path), "tokenizer_config.json", tok_cfg)
    with pytest.raises(InputError) as err:
        hf_vocab.special_vocab(str(tmp_path), {}, N_VOCAB)
    assert needle in str(err.value), err.value


def test_too_many_additional_chat_templates_are_one_input_error(tmp_path):
    _write(str(tmp_path), "tokenizer.json", dict(added_tokens=[], model=dict(type="BPE", vocab={})))
    _write(str(tmp_path), "tokenizer_config.json", dict(bos_token="<s>"))
    _write(str(tmp_path), "chat_template.jinja", "{{ messages }}")
    os.makedirs(tmp_path / "additional_chat_templates")
    for i in range(hf_vocab._MAX_TEMPLATES + 1):
        _write(str(tmp_path), f"additional_chat_templates/t{i}.jinja", "{{ x }}")
    with pytest.raises(InputError, match="chat templates, more than"):
        hf_vocab.special_vocab(str(tmp_path), {}, N_VOCAB)
