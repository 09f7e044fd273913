"""``nbwoq quantize --method sinq``: column scales folded into the feeders, streamed.

Tiny random Llama (grouped-query attention), Qwen3 and Gemma 3 models built offline from
their transformers config classes, with input columns of very different spreads (so the
search picks scales away from 1) and norms away from 1 (0 for Gemma), saved as float32
safetensors. The command's folds alone (no quantization) must leave the model's logits
as they were; its nbwoq-format output must decode to exactly what
``nbwoq_torch.quantize_model(method="sinq")`` makes of the same model; its GGUF and GPTQ
outputs must stay close to the source; a resumed run must end byte for byte as an
uninterrupted one.
"""

import copy
import json
import os

import numpy as np
import pytest

from nbwoq.command.cli import main
from nbwoq.formats import column_fold
from nbwoq.formats.options import QuantOptions
from nbwoq.formats.source import Source

from cli_helpers import interrupt_at_call

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=False)),
    # transformers' GGUF loader takes these head sizes from the config classes' defaults
    "qwen3": ("Qwen3Config", dict(head_dim=128, tie_word_embeddings=False)),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=256)),
}


def _model(family, folder):
    cls, overrides = FAMILIES[family]
    config = getattr(transformers, cls)(**SMALL, **overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms away from their initial 1 (or 0), so a wrong offset shows
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "layers." in name:  # input columns of unequal spread: something for SINQ to balance
                p.mul_(torch.exp(torch.randn(p.shape[1], generator=gen))[None, :])
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def source(request, tmp_path_factory):
    family = request.param
    folder = str(tmp_path_factory.mktemp(family) / f"tiny-{family}")
    return family, folder, _model(family, folder)


def _logits(model):
    x = torch.tensor([[1, 5, 9, 100, 7, 3, 42, 255, 17]])
    with torch.no_grad():
        return model(x).logits.double()


def _with(model, state):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in state:
                p.copy_(torch.from_numpy(np.asarray(state[name], dtype=np.float32)))
    return out


def _folded_state(folder, options):
    """Every tensor of the source as the command's folds leave it, before quantization."""
    src = Source(folder)
    plan = [(shard, [(info, options.selects(info.name, info.shape, info.dtype)) for info in infos])
            for shard, infos in src.shards]
    fold = column_fold.ColumnFold.build(src, options, plan)
    state = {}
    for _, info in src.tensors():
        with column_fold.open_tensor(src, info, fold) as (array, dtype_name, _):
            state[info.name] = np.array(array, dtype=np.float32)
    return fold, state


def test_the_folds_leave_the_float_model_unchanged(source):
    family, folder, model = source
    fold, state = _folded_state(folder, QuantOptions(4, 32, "asym", method="sinq"))
    groups = {g.feeder: g for steps in fold.steps.values() for g, _, _ in steps}
    layers = model.config.num_hidden_layers
    assert len(groups) == 4 * layers  # two norms, up -> down, v -> o (grouped-query: tied heads)
    moved = [n for n in groups if not np.array_equal(state[n], model.state_dict()[n].numpy())]
    assert len(moved) == len(groups)  # every feeder took a scale
    folded = _with(model, state)
    torch.testing.assert_close(_logits(folded), _logits(model), rtol=1e-4, atol=1e-4)
    # the check can fail: the consumers' columns without their feeders' scales
    wrong = _with(model, {n: a for n, a in state.items() if n not in groups})
    assert not torch.allclose(_logits(wrong), _logits(model), rtol=1e-2, atol=1e-2)


def test_nbwoq_output_is_what_quantize_model_makes(source, tmp_path):
    import nbwoq
    import nbwoq_torch

    family, folder, model = source
    out, report_path = str(tmp_path / "out"), str(tmp_path / "r.json")
    assert main(["quantize", folder, out, "--method", "sinq", "--group-size", "32", "--quiet",
                 "--report", report_path]) == 0
    expected = copy.deepcopy(model)
    torch_report = nbwoq_torch.quantize_model(expected, bits=4, group_size=32, method="sinq")
    stored = nbwoq.load(out)
    expected_state = expected.state_dict()
    for name, value in stored.items():
        got = nbwoq.dequantize(value) if hasattr(value, "codes") else np.asarray(value)
        np.testing.assert_array_equal(np.asarray(got, np.float32), expected_state[name].numpy(), err_msg=name)
    report = json.load(open(report_path))
    rows = {r["name"]: r for r in report["tensors"] if r["weighted_error"] is not None}
    assert len(rows) == len(torch_report) == 7 * model.config.num_hidden_layers
    for r in torch_report:  # the torch face measures against the unfolded folded weight: near, not equal
        row = rows[r["name"] + ".weight"]
        assert row["rtn_weighted_error"] == pytest.approx(r["rtn_error"], rel=1e-3)
        assert row["weighted_error"] == pytest.approx(r["error"], rel=1e-3)
    summary = report["summary"]
    assert summary["mean_weighted_error"] < 0.9 * summary["mean_rtn_weighted_error"]
    assert "sinq" in summary["label"]


def test_gguf_output_from_a_folder_keeps_the_logits(source, tmp_path):
    gguf = pytest.importorskip("gguf")  # noqa: F841
    family, folder, model = source
    ref = _logits(model)
    err = {}
    for method in ("rtn", "sinq"):
        out = str(tmp_path / f"{method}.gguf")
        assert main(["quantize", folder, out, "--method", method, "--bits", "8", "--quiet"]) == 0
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"{method}.gguf",
                                                                   dtype=torch.float32).eval()
        err[method] = float((_logits(loaded) - ref).abs().max())
    # Q8_0: both near the source; a fold the converter undid (Gemma's norm + 1) would not be
    assert err["sinq"] < 3 * err["rtn"] + 1e-3, err


def test_gptq_output_decodes_near_the_folded_model(source, tmp_path):
    family, folder, model = source
    out = str(tmp_path / "gptq")
    assert main(["quantize", folder, out, "--format", "gptq", "--method", "sinq", "--bits", "8",
                 "--group-size", "32", "--quiet"]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert cfg["meta"]["method"] == "sinq+rtn"
    _, state = _folded_state(folder, QuantOptions(8, 32, "asym", method="sinq"))
    from nbwoq.formats import safetensors_io as st

    tensors, _ = st.read_header(os.path.join(out, "model.safetensors"))
    for name in state:
        if name in tensors:  # the copied tensors: the folded values, as stored
            with st.TensorMap(tensors[name]) as a:
                np.testing.assert_array_equal(np.asarray(a, np.float32), state[name], err_msg=name)
    assert any(n.endswith(".qweight") for n in tensors)


def test_sinq_changes_the_codes_that_rtn_makes(source, tmp_path):
    family, folder, _ = source
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["quantize", folder, a, "--quiet", "--group-size", "32"]) == 0
    assert main(["quantize", folder, b, "--quiet", "--group-size", "32", "--method", "sinq"]) == 0
    ta = open(os.path.join(a, "model.safetensors"), "rb").read()
    tb = open(os.path.join(b, "model.safetensors"), "rb").read()
    assert ta != tb


def _files(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_interrupted_sinq_run_resumes_byte_identical(tiny_sharded, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    restore = interrupt_at_call(monkeypatch, 9)[1]
    assert main(["quantize", tiny_sharded, out, "--method", "sinq", "--quiet"]) == 130
    finished = [f for f in os.listdir(out + ".partial") if f.endswith(".safetensors")]
    assert finished
    restore()
    # the scales are searched again, for the same settings only
    assert main(["quantize", tiny_sharded, out, "--quiet", "--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err
    report_path = str(tmp_path / "r.json")
    assert main(["quantize", tiny_sharded, out, "--method", "sinq", "--quiet", "--resume",
                 "--report", report_path]) == 0
    assert json.load(open(report_path))["summary"]["resumed_shards"] == len(finished)
    fresh = str(tmp_path / "fresh")
    assert main(["quantize", tiny_sharded, fresh, "--method", "sinq", "--quiet"]) == 0
    assert _files(out) == _files(fresh)


def test_interrupted_sinq_gguf_run_resumes_byte_identical(tiny_sharded, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    out = str(tmp_path / "m.gguf")
    restore = interrupt_at_call(monkeypatch, 12)[1]
    assert main(["quantize", tiny_sharded, out, "--method", "sinq", "--quiet"]) == 130
    assert os.path.exists(out + ".partial")
    restore()
    assert main(["quantize", tiny_sharded, out, "--method", "sinq", "--quiet", "--resume"]) == 0
    fresh = str(tmp_path / "fresh.gguf")
    assert main(["quantize", tiny_sharded, fresh, "--method", "sinq", "--quiet"]) == 0
    assert open(out, "rb").read() == open(fresh, "rb").read()


def _edit(src, dst, config=None, tensors=None):
    """A copy of folder ``src`` with config.json keys changed and tensors replaced."""
    import shutil

    from nbwoq.formats import safetensors_io as st

    shutil.copytree(src, dst)
    if config is not None:
        path = os.path.join(dst, "config.json")
        cfg = json.load(open(path))
        cfg.update(config)
        json.dump(cfg, open(path, "w"))
    if tensors is not None:
        for shard in [f for f in os.listdir(dst) if f.endswith(".safetensors")]:
            path = os.path.join(dst, shard)
            infos, _ = st.read_header(path)
            items = []
            for name, info in infos.items():
                with st.TensorMap(info) as a:
                    value = np.array(a)
                dtype = info.dtype
                if name in tensors:
                    dtype, value = tensors[name]
                items.append((name, dtype, value))
            os.remove(path)
            st.save_file(path, items)
    return str(dst)


@pytest.mark.parametrize("case, message", [
    ("family", "model_type 'falcon'"),
    ("heads", "no absorption plan"),
    ("int-norm", "stored as I32"),
    ("nan", "row 3"),
    ("mixed-dtype", "differ in dtype"),
    ("single-file", "needs a Hugging Face folder"),
    ("clip", "no --clip"),
    ("codebook", "--dtype int"),
    ("type", "--method must be one of"),
], ids=lambda v: v if " " not in v else "")
def test_bad_input_is_one_error_line_before_anything_is_written(tiny_sharded, tmp_path, capsys, case, message):
    src, extra = tiny_sharded, []
    name = "model.layers.0.input_layernorm.weight"
    if case == "family":
        src = _edit(tiny_sharded, tmp_path / "src", config=dict(model_type="falcon"))
    elif case == "heads":
        src = _edit(tiny_sharded, tmp_path / "src", config=dict(num_attention_heads=3))
    elif case == "int-norm":
        src = _edit(tiny_sharded, tmp_path / "src", tensors={name: ("I32", np.ones(64, np.int32))})
    elif case == "nan":
        w = np.full((32, 64), 0x3F80, np.uint16)  # bfloat16 1.0, as the others are stored
        w[3, 5] = 0x7FC0  # NaN
        src = _edit(tiny_sharded, tmp_path / "src", tensors={"model.layers.0.self_attn.k_proj.weight": ("BF16", w)})
    elif case == "mixed-dtype":
        src = _edit(tiny_sharded, tmp_path / "src",
                    tensors={"model.layers.0.self_attn.k_proj.weight": ("F32", np.ones((32, 64), np.float32))})
    elif case == "single-file":
        from nbwoq.formats import safetensors_io as st

        src = str(tmp_path / "m.safetensors")
        st.save_file(src, [("model.layers.0.mlp.down_proj.weight", "F32", np.ones((8, 64), np.float32))])
    elif case == "clip":
        extra = ["--clip", "group"]
    elif case == "codebook":
        extra = ["--dtype", "nf4"]
    else:
        extra = ["--type", "Q4_K_M"]
    out = tmp_path / "out"
    assert main(["quantize", src, str(out), "--method", "sinq", "--quiet", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nbwoq: error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_a_fold_that_would_overflow_a_half_is_not_made(tmp_path, monkeypatch):
    from nbwoq.command.demo_model import write_checkpoint
    from nbwoq.dual import DualScale

    from cli_helpers import TINY

    src = str(write_checkpoint(str(tmp_path / "f16"), dtype="float16", **TINY))

    def huge(arrays, *a, **k):  # a norm near 1 times 1e5 is inf in float16
        channels = arrays[0].shape[1] // k.get("repeat", 1)
        return DualScale(np.full(channels, 1e5), np.ones(channels), 0.0, 0.0)

    monkeypatch.setattr(column_fold, "dual_scale", huge)
    options = QuantOptions(4, 128, "asym", method="sinq")
    fold, state = _folded_state(src, options)
    assert fold.steps == {}  # every group left unfolded: plain round to nearest
    a, b = str(tmp_path / "rtn"), str(tmp_path / "sinq")
    assert main(["quantize", src, a, "--quiet", "--method", "rtn"]) == 0
    assert main(["quantize", src, b, "--quiet", "--method", "sinq"]) == 0
    import nbwoq

    ra, rb = nbwoq.load(a), nbwoq.load(b)
    for name in ra:
        x = nbwoq.dequantize(ra[name]) if hasattr(ra[name], "codes") else ra[name]
        y = nbwoq.dequantize(rb[name]) if hasattr(rb[name], "codes") else rb[name]
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
