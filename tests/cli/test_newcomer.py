"""The command as a newcomer meets it: outputs that make sense for the source, honest
timings, clean interrupts, defaults stated in --help."""

import json
import os

import pytest

from nbwoq.command import run
from nbwoq.command.cli import main


def test_out_ending_in_gguf_is_a_gguf_file(tiny_bf16, tmp_path):
    pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    assert main(["quantize", tiny_bf16, str(out), "--quiet"]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"


def test_out_ending_in_gguf_with_another_format_is_refused_with_a_hint(tiny_bf16, tmp_path, capsys):
    assert main(["quantize", tiny_bf16, str(tmp_path / "m.gguf"), "--format", "nbwoq", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ends in .gguf" in err and "--format gguf" in err
    assert not os.path.lexists(tmp_path / "m.gguf")


@pytest.mark.parametrize("fmt", ["nbwoq", "gptq"])
def test_gguf_source_into_a_folder_format_is_refused_clearly(tiny_bf16, tmp_path, capsys, fmt):
    pytest.importorskip("gguf")
    gguf_file = tmp_path / "m.gguf"
    assert main(["quantize", tiny_bf16, str(gguf_file), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(gguf_file), str(tmp_path / "out"), "--format", fmt, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GGUF" in err
    assert not os.path.lexists(tmp_path / "out")


def test_requantizing_a_quantized_source_warns_once(tiny_bf16, tmp_path, capsys):
    pytest.importorskip("gguf")
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert main(["quantize", tiny_bf16, str(first), "--quiet"]) == 0
    assert main(["quantize", str(first), str(second)]) == 0
    err = capsys.readouterr().err
    assert err.count("already quantized") == 1 and "Q4_0" in err


def test_first_tensor_of_a_kind_is_marked_as_including_compilation(tiny_bf16, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["quantize", tiny_bf16, str(tmp_path / "out"), "--report", str(report), "--top", "0"]) == 0
    rows = json.loads(report.read_text())["tensors"]
    marked = [r for r in rows if r["includes_jit"]]
    kinds = {r["dtype"] for r in rows if r["rel_mse"] is not None}  # copies go file to file: no kernel
    assert sorted(r["dtype"] for r in marked) == sorted(kinds) and all(r["rel_mse"] is not None for r in marked)
    assert "includes compiling" in capsys.readouterr().out


def test_throughput_after_resume_counts_only_the_work_done(tiny_sharded, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    real = run._ShardStream.write
    calls = []

    def fail_late(self, *args):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    with monkeypatch.context() as m:
        m.setattr(run._ShardStream, "write", fail_late)
        assert main(["quantize", tiny_sharded, out, "--quiet"]) == 1
    report = tmp_path / "r.json"
    assert main(["quantize", tiny_sharded, out, "--resume", "--quiet", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    s, rows = data["summary"], data["tensors"]
    kept = [r for r in rows if r.get("resumed")]
    assert kept and s["resumed_shards"] == 2
    done_bytes = sum(r["bytes_in"] for r in rows if not r.get("resumed"))
    assert s["throughput_bytes_per_s"] == pytest.approx(done_bytes / s["seconds"])


def test_ctrl_c_after_out_is_complete_exits_0(tiny_bf16, tmp_path, monkeypatch, capsys):
    from nbwoq.command import report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "format_table", interrupted)
    assert main(["quantize", tiny_bf16, str(tmp_path / "out"), "--quiet"]) == 0
    assert os.path.isdir(tmp_path / "out") and "interrupted" not in capsys.readouterr().err


def test_ctrl_c_during_start_up_is_one_line_and_130(tiny_bf16, tmp_path, monkeypatch, capsys):
    from nbwoq.formats import source

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(source.Source, "__init__", interrupted)
    assert main(["quantize", tiny_bf16, str(tmp_path / "out"), "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "nbwoq: interrupted; run again with --resume to keep finished shards"]


def test_no_progress_bar_when_stderr_is_not_a_terminal(tiny_bf16, tmp_path, capsys):
    assert main(["quantize", tiny_bf16, str(tmp_path / "out")]) == 0
    assert "quantizing" not in capsys.readouterr().err  # pytest's capture is no terminal


@pytest.mark.parametrize("argv, needles", [
    (["generate", "--help"], ["(default bfloat16)", "(default 0)", "(default: default)"]),
    (["quantize", "--help"], ["default: gguf when OUT ends in .gguf"]),
])
def test_help_states_the_defaults(capsys, argv, needles):
    with pytest.raises(SystemExit):
        main(argv)
    text = " ".join(capsys.readouterr().out.split())
    for needle in needles:
        assert needle in text


def test_load_names_the_real_format_of_a_gguf_file(tiny_bf16, tmp_path):
    pytest.importorskip("gguf")
    import nbwoq

    out = tmp_path / "m.gguf"
    assert main(["quantize", tiny_bf16, str(out), "--quiet"]) == 0
    with pytest.raises(ValueError, match="a GGUF file, not nbwoq's format"):
        nbwoq.load(out)


def test_method_refit_stores_refit_int_codes_and_lowers_the_error(tiny_f32, tmp_path):
    import numpy as np

    import nbwoq
    from cli_helpers import read_tensor

    out_rtn, out_refit = tmp_path / "rtn", tmp_path / "refit"
    assert main(["quantize", tiny_f32, str(out_rtn), "--group-size", "32", "--quiet"]) == 0
    assert main(["quantize", tiny_f32, str(out_refit), "--group-size", "32", "--method", "refit", "--quiet"]) == 0
    name = "model.layers.0.mlp.down_proj.weight"
    w = read_tensor(tiny_f32, name)
    codes, scale, zp = nbwoq.refit_int(w.copy(), bits=4, group_size=32, scheme="asym")
    g = np.arange(w.shape[1]) // 32
    np.testing.assert_array_equal(nbwoq.dequantize(nbwoq.load(out_refit)[name]), (codes - zp[:, g]) * scale[:, g])
    err = {k: float(np.sum((nbwoq.dequantize(nbwoq.load(p)[name]) - w) ** 2)) for k, p in
           (("rtn", out_rtn), ("refit", out_refit))}
    assert err["refit"] < err["rtn"]



def test_method_hqq_stores_refine_zero_codes(tiny_f32, tmp_path, capsys, monkeypatch):
    import numpy as np

    import nbwoq
    from cli_helpers import read_tensor
    from nbwoq.formats import quantizer

    # the tiny model's zero points do not move (refine_zero's result is then round to
    # nearest's), so equal files alone would not show that it ran: count its calls
    calls = []
    monkeypatch.setattr(quantizer, "refine_zero",
                        lambda w, *a, **k: calls.append(w.shape) or nbwoq.refine_zero(w, *a, **k))
    out = tmp_path / "hqq"
    assert main(["quantize", tiny_f32, str(out), "--group-size", "32", "--clip", "group", "--method", "hqq",
                 "--quiet"]) == 0
    assert len(calls) == 14
    name = "model.layers.0.mlp.down_proj.weight"
    w = read_tensor(tiny_f32, name)
    q = nbwoq.search_clip(w, bits=4, group_size=32, per_group=True, weighting="magnitude").astype(np.float32)
    codes, scale, zp = nbwoq.refine_zero(w.copy(), bits=4, group_size=32, quantile=q)
    g = np.arange(w.shape[1]) // 32
    np.testing.assert_array_equal(nbwoq.dequantize(nbwoq.load(out)[name]), (codes - zp[:, g]) * scale[:, g])
    for extra in (["--scheme", "sym"], ["--dtype", "nf4"]):
        assert main(["quantize", tiny_f32, str(tmp_path / "bad"), "--method", "hqq", *extra]) == 1
        err = capsys.readouterr().err
        assert "--method hqq refines integer zero points" in err and err.count("\n") == 1
        assert not (tmp_path / "bad").exists()

def _weighted(x, y, size):
    """Relative importance-weighted error (w = rms of the group + |x|), one group at a time."""
    import numpy as np

    x, y = x.astype(np.float64), y.astype(np.float64)
    err = norm = 0.0
    for g0 in range(0, x.shape[1], size):
        seg = x[:, g0:g0 + size]
        w = np.sqrt((seg ** 2).mean(axis=1, keepdims=True)) + np.abs(seg)
        err += (w * (seg - y[:, g0:g0 + size]) ** 2).sum()
        norm += (w * seg ** 2).sum()
    return err / norm


@pytest.mark.parametrize("fmt", ["nbwoq", "gptq"])
def test_report_states_rtn_weighted_error_next_to_the_method(tiny_f32, tmp_path, capsys, fmt):
    import numpy as np

    import nbwoq
    from cli_helpers import read_tensor

    report_path = tmp_path / "r.json"
    assert main(["quantize", tiny_f32, str(tmp_path / "out"), "--format", fmt, "--group-size", "32", "--method",
                 "refit", "--report", str(report_path)]) == 0
    text = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    rows = [r for r in report["tensors"] if r["rel_mse"] is not None]
    assert rows and all(r["weighted_error"] <= r["rtn_weighted_error"] for r in rows)
    assert all(r["weighted_error"] is None for r in report["tensors"] if r["rel_mse"] is None)
    name = "model.layers.0.mlp.down_proj.weight"
    row = next(r for r in rows if r["name"] == name)
    w = read_tensor(tiny_f32, name)
    codes, scale, zp = nbwoq.refit_int(w.copy(), bits=4, group_size=32)
    g = np.arange(w.shape[1]) // 32
    assert row["weighted_error"] == pytest.approx(_weighted(w, (codes - zp[:, g]) * scale[:, g], 32), rel=1e-6)
    rtn = nbwoq.quant_tensor(w.copy(), bits=4, group_size=32)
    assert row["rtn_weighted_error"] == pytest.approx(_weighted(w, rtn, 32), rel=1e-6)
    s = report["summary"]
    assert s["mean_weighted_error"] == pytest.approx(np.mean([r["weighted_error"] for r in rows]))
    assert s["mean_weighted_error"] < s["mean_rtn_weighted_error"]
    assert f"{s['mean_weighted_error']:.3e} with method refit, {s['mean_rtn_weighted_error']:.3e} with rtn" in text


def test_rtn_report_has_no_weighted_comparison(tiny_f32, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    assert main(["quantize", tiny_f32, str(tmp_path / "out"), "--group-size", "32", "--clip", "group",
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert all(r["weighted_error"] is None and r["rtn_weighted_error"] is None for r in report["tensors"])
    assert report["summary"]["mean_weighted_error"] is None
    assert "weighted error" not in capsys.readouterr().out


def test_method_must_fit_the_settings(tiny_f32, tmp_path, capsys):
    assert main(["quantize", tiny_f32, str(tmp_path / "a.gguf"), "--type", "Q4_0", "--method", "refit"]) == 1
    assert main(["quantize", tiny_f32, str(tmp_path / "b"), "--method", "reference"]) == 1
    assert main(["quantize", tiny_f32, str(tmp_path / "c"), "--dtype", "nf4", "--method", "refit"]) == 1
    assert capsys.readouterr().err.count("nbwoq: error:") == 3
