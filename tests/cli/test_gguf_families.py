"""Hugging Face folders of each supported family -> GGUF, read back by transformers' GGUF loader.

Each family is a tiny random model built offline from its transformers config class and
saved with ``save_pretrained`` (float32 safetensors). ``--type F32`` stores every value as
it is: the loaded model gives the source model's logits. ``--type Q8_0`` quantizes the
matrices: the loaded model gives the logits of the source model carrying the file's own
dequantized matrices (decoded here with gguf-py and mapped back by gguf-py's name map and
the test's own inverse of llama.cpp's query/key row order).

transformers' loader reads only some keys of each family and takes the rest from the
config class's defaults, so the models keep those defaults where the loader does not read
them (Qwen3's and Gemma's ``head_dim``/``query_pre_attn_scalar`` of 128/256, Gemma's
soft-caps and layer pattern).
"""

import numpy as np
import pytest

from nbwoq.command.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# family -> (config class, overrides, GGUF architecture, query/key rows permuted)
FAMILIES = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=False), "llama", True),
    "mistral": ("MistralConfig", dict(sliding_window=None), "llama", True),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), "qwen2", False),
    "qwen3": ("Qwen3Config", dict(head_dim=128, tie_word_embeddings=False), "qwen3", False),
    "gemma2": ("Gemma2Config", dict(head_dim=256), "gemma2", False),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=256), "gemma3", False),
    "phi3": ("Phi3Config", dict(), "phi3", False),
}


def _model(family, folder):
    cls, overrides, _, _ = FAMILIES[family]
    config = getattr(transformers, cls)(**SMALL, **overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms away from their initial 1 (or 0), so a wrong offset shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def source(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(family) / f"tiny-{family}"
    return family, str(folder), _model(family, str(folder))


def _logits(model):
    x = torch.tensor([[1, 5, 9, 100, 7, 3, 42, 255, 17]])
    with torch.no_grad():
        return model(x).logits


def _load(path):
    import os

    return transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                             dtype=torch.float32).eval()


def test_f32_file_gives_the_source_logits(source, tmp_path):
    family, folder, model = source
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", folder, out, "--type", "F32", "--quiet"]) == 0
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == FAMILIES[family][2]
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not model.config.tie_word_embeddings)
    loaded = _load(out)
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=1e-5, atol=1e-5)


def _rotary_inverse(rows, heads):
    order = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(order)


def test_q8_0_file_gives_the_logits_of_its_own_dequantization(source, tmp_path):
    family, folder, model = source
    _, _, arch, permuted = FAMILIES[family]
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", folder, out, "--type", "Q8_0", "--pure", "--quiet"]) == 0
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    cfg = model.config
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), cfg.num_hidden_layers)
    expected = type(model)(cfg).eval()
    expected.load_state_dict(model.state_dict())
    quantized = 0
    with torch.no_grad():
        for name, p in expected.named_parameters():
            gname = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
            t = tensors.get(gname)
            if t is None or t.tensor_type.name != "Q8_0":
                continue
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            if permuted and gname.endswith(("attn_q.weight", "attn_k.weight")):
                heads = cfg.num_attention_heads if "attn_q" in gname else cfg.num_key_value_heads
                w = w[_rotary_inverse(w.shape[0], heads)]
            assert np.abs(w - p.numpy()).max() <= np.abs(p.numpy()).max() / 100  # near the source
            p.copy_(torch.from_numpy(w))
            quantized += 1
    assert quantized >= 1 + 4 * cfg.num_hidden_layers
    loaded = _load(out)
    torch.testing.assert_close(_logits(loaded), _logits(expected), rtol=1e-5, atol=1e-5)


def _edit_config(src, dst, **changes):
    import json
    import shutil

    shutil.copytree(src, dst)
    path = f"{dst}/config.json"
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return str(dst)


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("phi3") / "tiny-phi3")
    _model("phi3", folder)
    return folder


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="falcon"), "convert it with llama.cpp's convert_hf_to_gguf.py"),
    (dict(rope_parameters=dict(rope_type="longrope", rope_theta=10000.0)), "llama.cpp's convert_hf_to_gguf.py"),
    (dict(sliding_window="wide"), "sliding_window must be an integer"),
    (dict(rope_parameters=dict(rope_theta=-1.0)), "rope_theta must be a positive number"),
], ids=["other-model-type", "phi3-longrope", "bad-sliding-window", "bad-rope-theta"])
def test_what_cannot_be_converted_is_one_error_line(phi3, tmp_path, capsys, changes, message):
    src = _edit_config(phi3, tmp_path / "src", **changes)
    out = tmp_path / "m.gguf"
    assert main(["quantize", src, str(out), "--type", "Q8_0", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


# -- Llama 3 rope scaling: llama.cpp's rope_freqs.weight ------------------------------------

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """A Llama with Llama 3 rope scaling whose 8 rotary pairs fall in all three bands
    (head_dim 16: wavelengths 6, 20, 63, 199, ... against 64/4 and 64/1)."""
    folder = str(tmp_path_factory.mktemp("llama3") / "tiny-llama3")
    config = transformers.LlamaConfig(**SMALL, rope_parameters=LLAMA3_ROPE, max_position_embeddings=512,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def _default_inv_freq(dim, base=10000.0):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def test_llama3_rope_scaling_is_rope_freqs(llama3, tmp_path):
    """The factors divide each pair's frequency in llama.cpp: default / transformers' own
    llama3 frequencies. No scaling keys (llama.cpp's converter writes none for llama3)."""
    folder, model = llama3
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", folder, out, "--type", "Q8_0", "--quiet"]) == 0
    reader = gguf.GGUFReader(out)
    t = {t.name: t for t in reader.tensors}["rope_freqs.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [8]
    want = (_default_inv_freq(16) / model.model.rotary_emb.inv_freq).numpy()
    np.testing.assert_allclose(t.data, want, rtol=2e-6)
    assert t.data[0] == 1.0 and t.data[-1] == 8.0 and 1.0 < t.data[1] < 8.0  # every band
    assert not any(k.startswith("llama.rope.scaling") for k in reader.fields)


def test_llama3_file_gives_the_source_logits_with_its_rope_freqs(llama3, tmp_path):
    """transformers' GGUF loader ignores rope_freqs; given the rotary frequencies llama.cpp
    derives from the file (default / factor), the loaded model is the source model."""
    folder, model = llama3
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", folder, out, "--type", "F32", "--quiet"]) == 0
    factors = {t.name: t for t in gguf.GGUFReader(out).tensors}["rope_freqs.weight"].data
    loaded = _load(out)
    assert not torch.allclose(_logits(loaded), _logits(model), atol=1e-3)  # the factors matter here
    loaded.model.rotary_emb.inv_freq = _default_inv_freq(16) / torch.from_numpy(np.array(factors))
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=1e-5, atol=1e-5)


def test_llama3_rope_is_refused_where_llama_cpp_has_no_rope_freqs(tmp_path, capsys):
    folder = str(tmp_path / "qwen2")
    _model("qwen2", folder)
    src = _edit_config(folder, tmp_path / "src", rope_parameters=LLAMA3_ROPE)
    out = tmp_path / "m.gguf"
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["quantize", src, str(out), "--type", "Q8_0", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "rope scaling 'llama3' is not converted here (qwen2)" in err and len(err.splitlines()) == 1
    assert not out.exists()
