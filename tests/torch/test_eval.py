"""``nbwoq eval``: perplexity and KL divergence, on a tiny random Llama built offline.

The model (2 blocks, hidden size 64) and its byte-level BPE tokenizer (trained here on a
few sentences) are saved as a Hugging Face folder; GGUF and nbwoq-format copies come from
``nbwoq quantize``. The numbers are checked against a direct computation with the model.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from nbwoq.command.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("gguf")

SENTENCES = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
             "all that glitters is not gold", "where there is smoke there is fire"]
TEXT = " ".join(SENTENCES * 8) + "\n"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tokenizer():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 5, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(folder, text file)``: a random tiny Llama with tokenizer, and a short text."""
    root = tmp_path_factory.mktemp("eval")
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float()
    text = root / "text.txt"
    text.write_text(TEXT)
    return _save(model, _tokenizer(), root / "tiny"), str(text)


def _eval(tmp_path, *argv):
    report = str(tmp_path / "report.json")
    assert main(["eval", *argv, "--report", report]) == 0
    return json.load(open(report))


def _direct_ppl(model, tokenizer, text, n, window):
    ids = tokenizer(text, return_tensors="pt").input_ids[0, :n]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, window):
            chunk = ids[start:start + window][None]
            logits = model(chunk).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum"))
            count += chunk.shape[1] - 1
    return math.exp(nll / count), count


def test_perplexity_equals_direct_computation(tiny, tmp_path, capsys):
    folder, text = tiny
    report = _eval(tmp_path, folder, "--text", text, "--tokens", "50", "--window", "16")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ppl, count = _direct_ppl(model, transformers.AutoTokenizer.from_pretrained(folder), TEXT, 50, 16)
    assert report["perplexity"] == pytest.approx(ppl, rel=1e-6)
    assert (report["tokens"], report["window"], report["predicted"], report["windows"]) == (50, 16, count, 4)
    assert report["model"]["kind"] == "hf" and "kl" not in report
    out = capsys.readouterr().out
    assert "16-token windows" in out and f"perplexity: {report['perplexity']:.4f}" in out


def test_default_text_is_cpythons_topics(tiny, tmp_path, capsys):
    folder, _ = tiny
    report = _eval(tmp_path, folder, "--tokens", "40")
    assert report["text"]["default"] and report["text"]["path"].endswith(os.path.join("pydoc_data", "topics.py"))
    assert report["tokens"] == 40 and report["window"] == 512
    out = capsys.readouterr().out
    assert "pydoc_data/topics.py" in out and "512-token windows" in out


def test_against_itself_is_zero_kl_and_full_agreement(tiny, tmp_path):
    folder, text = tiny
    report = _eval(tmp_path, folder, "--text", text, "--tokens", "64", "--window", "32", "--against", folder)
    assert report["kl"]["mean"] == pytest.approx(0.0, abs=1e-7)
    assert report["kl"]["max"] == pytest.approx(0.0, abs=1e-6)
    assert report["same_top1"] == 1.0
    assert report["reference_perplexity"] == report["perplexity"]


def test_against_a_perturbed_copy(tiny, tmp_path, capsys):
    folder, text = tiny
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # the perturbed copy has no tokenizer: MODEL's tokenizer is SRC's then
    other = _save(model, None, tmp_path / "perturbed")
    report = _eval(tmp_path, other, "--text", text, "--tokens", "64", "--window", "32", "--against", folder)
    assert report["kl"]["mean"] > 1e-4 and report["kl"]["max"] >= report["kl"]["p99"] >= report["kl"]["p50"] > 0
    assert 0 <= report["same_top1"] <= 1 and report["tokenizer"] == "against"
    assert report["perplexity"] != report["reference_perplexity"]
    # the KL by hand: KL(P_src || P_model) per predicted token, averaged
    src = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = transformers.AutoTokenizer.from_pretrained(folder)(TEXT, return_tensors="pt").input_ids[0, :64]
    kl, same = [], 0
    with torch.no_grad():
        for start in (0, 32):
            chunk = ids[start:start + 32][None]
            p = torch.log_softmax(src(chunk).logits[0, :-1], -1)
            q = torch.log_softmax(model(chunk).logits[0, :-1], -1)
            kl.append(torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1))
            same += int((p.argmax(-1) == q.argmax(-1)).sum())
    kl = torch.cat(kl)
    assert report["kl"]["mean"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert report["same_top1"] == same / 62
    out = capsys.readouterr().out
    assert "KL(SRC || MODEL)" in out and "same top-1 token" in out and "SRC's (MODEL has none)" in out


def test_gguf_and_nbwoq_inputs_load(tiny, tmp_path):
    folder, text = tiny
    gguf_file, nb = str(tmp_path / "q.gguf"), str(tmp_path / "nb")
    assert main(["quantize", folder, gguf_file, "--format", "gguf", "--group-size", "32", "--quiet"]) == 0
    assert main(["quantize", folder, nb, "--format", "nbwoq", "--quiet"]) == 0
    args = ["--text", text, "--tokens", "64", "--window", "32"]

    g = _eval(tmp_path, gguf_file, *args, "--against", folder)
    assert g["model"]["kind"] == "gguf" and g["tokenizer"] == "model"
    assert 0 < g["kl"]["mean"] < 0.1 and g["same_top1"] > 0.5

    n = _eval(tmp_path, nb, *args, "--against", folder)
    assert n["model"]["kind"] == "nbwoq" and n["tokenizer"] == "model"
    assert 0 < n["kl"]["mean"] < 0.1 and n["same_top1"] > 0.5
    # the nbwoq model is the architecture carrying nbwoq.dequantize's weights
    import nbwoq

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    state = {k: torch.from_numpy(v) for k, v in nbwoq.dequantize(nbwoq.load(nb)).items()}
    model.load_state_dict(state)
    ppl, _ = _direct_ppl(model, transformers.AutoTokenizer.from_pretrained(folder), TEXT, 64, 32)
    assert n["perplexity"] == pytest.approx(ppl, rel=1e-6)


def test_nbwoq_folder_without_config_takes_the_references_architecture(tiny, tmp_path, capsys):
    import shutil

    folder, text = tiny
    nb = str(tmp_path / "nb")
    assert main(["quantize", folder, nb, "--quiet"]) == 0
    args = ["--text", text, "--tokens", "64", "--window", "32", "--against", folder]
    with_config = _eval(tmp_path, nb, *args)
    bare = shutil.copytree(nb, tmp_path / "bare")
    os.remove(bare / "config.json")
    capsys.readouterr()
    assert _eval(tmp_path, str(bare), *args)["kl"] == with_config["kl"]
    assert main(["eval", str(bare), "--text", text]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json" in err[0] and "--against" in err[0]


def _one_error(capsys, argv, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbwoq: error:"), err
    return err[0]


def test_bad_inputs_give_one_error_line(tiny, tmp_path, capsys):
    folder, text = tiny
    assert "does not exist" in _one_error(capsys, ["eval", str(tmp_path / "missing")])
    (tmp_path / "x.bin").write_bytes(b"\0" * 8)
    assert "not a .gguf file" in _one_error(capsys, ["eval", str(tmp_path / "x.bin")])
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 8)
    assert "not a readable GGUF file" in _one_error(capsys, ["eval", str(tmp_path / "bad.gguf")])
    (tmp_path / "empty").mkdir()
    assert "holds no *.safetensors file" in _one_error(capsys, ["eval", str(tmp_path / "empty")])
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    bare = _save(model, None, tmp_path / "bare")
    capsys.readouterr()
    assert "no usable tokenizer" in _one_error(capsys, ["eval", bare, "--text", text])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "not UTF-8" in _one_error(capsys, ["eval", folder, "--text", str(tmp_path / "latin1.txt")])
    assert "--tokens must be" in _one_error(capsys, ["eval", folder, "--tokens", "1"])
    assert "--window must be" in _one_error(capsys, ["eval", folder, "--window", "1"])
    assert "folder does not exist" in _one_error(capsys, ["eval", folder, "--report", str(tmp_path / "no" / "r.json")])
    # a GPTQ folder without gptqmodel installed: what to install
    if importlib.util.find_spec("gptqmodel") is None:
        gptq = str(tmp_path / "gptq")
        assert main(["quantize", folder, gptq, "--format", "gptq", "--group-size", "32", "--quiet"]) == 0
        capsys.readouterr()
        assert "pip install gptqmodel" in _one_error(capsys, ["eval", gptq])
    # usage errors are argparse's: exit status 2
    with pytest.raises(SystemExit) as exc:
        main(["eval", folder, "--tokens", "many"])
    assert exc.value.code == 2


def test_interrupted_is_130(tiny, monkeypatch, capsys):
    from nbwoq_torch import evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", interrupted)
    assert main(["eval", tiny[0], "--text", tiny[1]]) == 130
    assert capsys.readouterr().err.strip() == "nbwoq: interrupted"


def test_without_torch_one_error_line(tmp_path):
    """Without torch, ``nbwoq eval`` says what to install; nothing else is imported."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from nbwoq.command.cli import main\n"
            "rc = main(['eval', 'model'])\n"
            "assert 'transformers' not in sys.modules and 'nbwoq_torch' not in sys.modules\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == ["nbwoq: error: nbwoq eval needs torch: pip install 'nbwoq[torch]'"]


def test_the_command_imports_no_torch_until_eval():
    code = ("import sys\nfrom nbwoq.command import cli\ncli._parser().parse_args(['eval', 'm'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def test_windows():
    from nbwoq_torch.evaluate import windows

    assert windows(50, 16) == [(0, 16), (16, 32), (32, 48), (48, 50)]
    assert windows(49, 16) == [(0, 16), (16, 32), (32, 48)]  # a 1-token tail predicts nothing
    np.testing.assert_equal(windows(2, 512), [(0, 2)])


def test_encoder_models_compare_embeddings_with_against(tmp_path, capsys):
    """A BERT-style encoder (as a sentence-transformers folder holds): no perplexity, its
    embeddings against the source's; without --against, one error line."""
    import json

    import torch

    from nbwoq.command.cli import main

    tokenizer = _tokenizer()
    cfg = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
    torch.manual_seed(0)
    src = tmp_path / "bert"
    _save(transformers.BertModel(cfg), tokenizer, src)
    out = tmp_path / "bert-int4"
    assert main(["quantize", str(src), str(out), "--group-size", "32", "--quiet"]) == 0
    report = tmp_path / "r.json"
    assert main(["eval", str(out), "--against", str(src), "--tokens", "200", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["encoder"] and 0.5 < data["embedding_cosine"]["mean"] < 1.0
    capsys.readouterr()
    assert main(["eval", str(src), "--against", str(src), "--tokens", "200", "--report", str(report)]) == 0
    same = json.loads(report.read_text())
    assert same["embedding_cosine"]["min"] > 0.999999 and same["token_cosine"]["p1"] > 0.999999
    capsys.readouterr()
    assert main(["eval", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "encoder" in err and "--against" in err
