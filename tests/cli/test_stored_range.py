"""Weights far from 1: the report's errors stay finite and scale-free, and values that a
format's float16 cannot hold are one error, not a file full of Inf."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nbwoq.command.cli import main


def _scaled(src, dst, factor=None, peak=None):
    """A copy of checkpoint folder ``src`` with every matrix times ``factor``, or scaled
    so its largest magnitude is ``peak``."""
    shutil.copytree(src, dst)
    for path in glob.glob(os.path.join(dst, "*.safetensors")):
        tensors = load_file(path)
        for k, v in tensors.items():
            if v.ndim == 2:
                f = np.float32(factor if factor is not None else peak / float(np.abs(v).max()))
                tensors[k] = v * f
        save_file(tensors, path, metadata={"format": "pt"})
    return dst


def _summary(src, out, args):
    report = out + ".json"
    assert main(["quantize", src, out, "--quiet", "--report", report, *args]) == 0
    return json.load(open(report))["summary"]


@pytest.mark.parametrize("args", [[], ["--dtype", "nf4"], ["--bits", "8", "--scheme", "sym"]],
                         ids=["int4", "nf4", "int8-sym"])
def test_report_errors_do_not_depend_on_the_weights_scale(tiny_f32, tmp_path, args):
    """2**100 is exact: the same codes, every error times 2**200. A group's squares are
    summed in float32, and again in float64 where float32 overflows (past 1.8e19; the
    report once said NaN), so the two runs agree to float32's sums."""
    big = _scaled(tiny_f32, str(tmp_path / "big"), factor=2.0 ** 100)
    small = _summary(tiny_f32, str(tmp_path / "out-small"), args)
    large = _summary(big, str(tmp_path / "out-big"), args)
    assert np.isfinite(large["mean_rel_mse"]) and np.isfinite(large["max_rel_mse"])
    for key in ("mean_rel_mse", "max_rel_mse"):
        assert large[key] == pytest.approx(small[key], rel=1e-6, abs=0)


@pytest.mark.parametrize("args, out_name", [
    (["--format", "gptq"], "out"),
    (["--format", "gguf"], "out.gguf"),
    (["--format", "gguf", "--scheme", "asym"], "out.gguf"),
    (["--format", "gguf", "--type", "F16"], "out.gguf"),
], ids=["gptq-int4", "gguf-q4_0", "gguf-q4_1", "gguf-f16"])
def test_values_past_float16_are_one_error_and_no_file(tiny_f32, tmp_path, args, out_name):
    """A largest |w| of 1e6: Q4_0's, Q4_1's and GPTQ int4's float16 scales (|w| / 8,
    range / 15) pass 65504, as F16 values do; the file would decode to Inf in every
    engine. One line on stderr (no NumPy warning), no OUT and no OUT.partial."""
    src = _scaled(tiny_f32, str(tmp_path / "src"), peak=1e6)
    out = str(tmp_path / out_name)
    run = subprocess.run([sys.executable, "-m", "nbwoq", "quantize", src, out, "--quiet", *args],
                         capture_output=True, text=True)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(err) == 1, run.stderr
    assert err[0].startswith("nbwoq: error: tensor '") and "65504" in err[0] and "--format nbwoq" in err[0]
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_a_range_past_float32_is_refused_by_the_nbwoq_format_too(tiny_f32, tmp_path, capsys):
    """Weights near +-3.3e38: an asym group's max - min overflows float32, so its scale
    would be Inf; the error does not point to --format nbwoq, the format in use."""
    src = _scaled(tiny_f32, str(tmp_path / "src"), peak=3.3e38)
    out = str(tmp_path / "out")
    assert main(["quantize", src, out, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "nbwoq: error: tensor '" in err and "3.4e38" in err and "--format nbwoq" not in err
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_values_within_float16_still_quantize(tiny_f32, tmp_path):
    """The check is on what is stored, not on the weights' size: 1e5 keeps Q4_0's scale
    (1.25e4) and GPTQ's (about 1.3e4) inside float16."""
    src = _scaled(tiny_f32, str(tmp_path / "src"), peak=1e5)
    for args, out in ((["--format", "gptq"], "gptq"), (["--format", "gguf"], "q.gguf")):
        summary = _summary(src, str(tmp_path / out), args)
        assert np.isfinite(summary["mean_rel_mse"])
