"""GGUF export, checked by a reader nbwoq did not write: transformers' GGUF loader.

The expected weights are built here from the core's codes and float16-rounded scales
(the file's own fake-quant); the loaded model must hold exactly those and give the same
logits as the float model carrying them.
"""

import os

import numpy as np
import pytest

import nbwoq
from nbwoq.command.cli import main

from cli_helpers import interrupt_at_call

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")


def _expected(w, kind, full_range=False):
    """What the file should decode to: core codes, float16 scale (and min for Q4_1)."""
    bits, scheme = {"Q4_0": (4, "sym"), "Q4_1": (4, "asym"), "Q8_0": (8, "sym")}[kind]
    codes, scale, zp = nbwoq.quant_tensor(w.copy(), bits=bits, group_size=32, scheme=scheme, return_int=True,
                                          full_range=full_range)
    d = scale.astype(np.float16).astype(np.float32)
    codes = nbwoq.quant_weight_w_scale(w.copy(), d, zp, group_size=32, bits=bits)  # decided with the stored scale
    q = codes.reshape(codes.shape[0], -1, 32)
    if kind == "Q4_1":
        m = (-zp * d).astype(np.float16).astype(np.float32)
        return (q * d[:, :, None] + m[:, :, None]).reshape(w.shape)
    return (q * d[:, :, None]).reshape(w.shape)


def _load(folder, file):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)


@pytest.mark.parametrize("kind, args", [
    ("Q4_0", []),  # the default: int4 sym full range, llama.cpp's own Q4_0 layout
    ("Q4_0", ["--no-full-range"]),
    ("Q4_1", ["--scheme", "asym"]),
    ("Q8_0", ["--bits", "8", "--scheme", "sym"]),
], ids=["q4_0-default", "q4_0-no-full-range", "q4_1", "q8_0"])
def test_transformers_gguf_loader_matches_fake_quant(tiny_bf16, tmp_path, kind, args):
    out = tmp_path / "m.gguf"
    assert main(["quantize", tiny_bf16, str(out), "--format", "gguf", "--quiet", *args]) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == kind and types["token_embd.weight"] == "BF16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    loaded = _load(str(tmp_path), "m.gguf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tiny_bf16, dtype=torch.float32)
    sd = ref.state_dict()
    with torch.no_grad():
        for name, v in sd.items():
            if ".layers." in name and v.ndim == 2:
                v.copy_(torch.from_numpy(_expected(v.numpy().copy(), kind, kind == "Q4_0" and not args)))
    got = loaded.state_dict()
    for name, v in sd.items():  # q/k rows come back in transformers' order: the permutation is right
        assert torch.equal(got[name], v), name
    x = torch.tensor([[1, 5, 9, 100, 7, 3, 42]])
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref(x).logits)


def test_gguf_source_requantized_keeps_metadata(tiny_bf16, tmp_path):
    """A GGUF source (here our own Q8_0) re-quantized to Q4_0: names and metadata are kept."""
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert main(["quantize", tiny_bf16, str(first), "--format", "gguf", "--bits", "8", "--quiet"]) == 0
    assert main(["quantize", str(first), str(second), "--format", "gguf", "--quiet", "--no-full-range"]) == 0
    ra, rb = gguf.GGUFReader(str(first)), gguf.GGUFReader(str(second))
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    assert rb.fields["llama.attention.head_count_kv"].contents() == 2
    assert rb.fields["general.file_type"].contents() == 2
    q8 = {t.name: t for t in ra.tensors}["blk.1.ffn_down.weight"]
    w = gguf.quants.dequantize(q8.data, q8.tensor_type).astype(np.float32)
    q4 = {t.name: t for t in rb.tensors}["blk.1.ffn_down.weight"]
    np.testing.assert_array_equal(gguf.quants.dequantize(q4.data, q4.tensor_type), _expected(w, "Q4_0"))
    _load(str(tmp_path), "b.gguf")  # and transformers still loads it


def test_q4_1_all_positive_weight(tiny_f32, tmp_path):
    """Groups with no negative weight (zero point 0) decode right: m = 0, not -16 * d."""
    import shutil

    from nbwoq.formats import safetensors_io as st

    src = tmp_path / "src"
    shutil.copytree(tiny_f32, src)
    path = str(src / "model.safetensors")
    tensors, _ = st.read_header(path)
    arrays = []
    for name, info in tensors.items():
        with st.TensorMap(info) as a:
            a = np.array(a)
        if name == "model.layers.1.mlp.up_proj.weight":
            a = np.abs(a) + np.float32(0.5)
            w = a
        arrays.append((name, "F32", a))
    st.save_file(path, arrays)
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(src), str(out), "--format", "gguf", "--scheme", "asym", "--quiet"]) == 0
    t = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}["blk.1.ffn_up.weight"]
    np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type), _expected(w, "Q4_1"))


def test_tokenizer_json_becomes_gguf_tokenizer(tmp_path):
    """A byte-level BPE tokenizer.json is written into the GGUF; transformers reads it back."""
    from cli_helpers import TINY
    from nbwoq.command.demo_model import write_checkpoint

    tokenizers = pytest.importorskip("tokenizers")
    src = tmp_path / "src"
    write_checkpoint(str(src), **dict(TINY, vocab_size=320))
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 20], trainer)
    assert 259 < tok.get_vocab_size() <= 320
    tok.save(str(src / "tokenizer.json"))
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(src), str(out), "--format", "gguf", "--quiet"]) == 0
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # GPT-2's own split (ByteLevel's regex)
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    text = "the lazy fox"
    assert loaded(text, add_special_tokens=False).input_ids == tok.encode(text).ids


def test_interrupted_gguf_run_resumes_keeping_finished_shards(tiny_sharded, tmp_path, monkeypatch, capsys):
    """A single GGUF file still resumes by shard: the tensors of the source shards that
    were finished are copied from the partial file, the rest quantized; settings that
    differ start over. Either way the file equals an uninterrupted run's."""
    import json

    from nbwoq.formats import quantizer

    out = str(tmp_path / "out.gguf")
    real = quantizer.clip_ratios
    restore = interrupt_at_call(monkeypatch, 9)[1]
    assert main(["quantize", tiny_sharded, out, "--format", "gguf", "--quiet"]) == 130
    assert not os.path.exists(out) and os.path.isfile(out + ".partial")
    state = json.load(open(out + ".partial.run.json"))
    assert 1 <= state["shards"] and state["tensors"] >= 1
    capsys.readouterr()

    # other settings cannot resume it, and leave it as it was
    before = open(out + ".partial", "rb").read()
    restore()
    assert main(["quantize", tiny_sharded, out, "--format", "gguf", "--bits", "8", "--quiet", "--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err
    assert open(out + ".partial", "rb").read() == before

    # the same settings: finished shards kept, the rest quantized
    quantized = []
    monkeypatch.setattr(quantizer, "clip_ratios", lambda *a, **k: quantized.append(a[3]) or real(*a, **k))
    report = str(tmp_path / "r.json")
    assert main(["quantize", tiny_sharded, out, "--format", "gguf", "--quiet", "--resume", "--report", report]) == 0
    summary = json.load(open(report))["summary"]
    assert summary["resumed_shards"] == state["shards"] and summary["quantized"] == 14
    assert len(quantized) < 14
    assert not os.path.exists(out + ".partial") and not os.path.exists(out + ".partial.run.json")
    fresh = str(tmp_path / "fresh.gguf")
    assert main(["quantize", tiny_sharded, fresh, "--format", "gguf", "--quiet"]) == 0
    assert open(out, "rb").read() == open(fresh, "rb").read()


def test_partial_gguf_without_a_record_is_started_over(tiny_sharded, tmp_path, capsys):
    """A run killed before its first shard leaves ``OUT.partial`` and no record: --resume
    has nothing to keep, says so, and writes the whole file."""
    out = str(tmp_path / "out.gguf")
    with open(out + ".partial", "wb") as f:
        f.write(b"GGUF torn")
    assert main(["quantize", tiny_sharded, out, "--format", "gguf", "--resume"]) == 0  # not --quiet: it logs
    assert "starting it over" in capsys.readouterr().err
    fresh = str(tmp_path / "fresh.gguf")
    assert main(["quantize", tiny_sharded, fresh, "--format", "gguf", "--quiet"]) == 0
    assert open(out, "rb").read() == open(fresh, "rb").read()
