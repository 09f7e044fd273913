"""GPTQ export: unpacked here with the layout's own rules (independently of nbwoq) and
compared with the core's codes at float16 scales. The gptqmodel consumer check is in
``scripts/integration.sh``."""

import json
import os
import shutil

import numpy as np
import pytest

import nbwoq
from nbwoq.formats import safetensors_io as st
from nbwoq.command.cli import main

from cli_helpers import read_tensor

LINEAR = "model.layers.0.mlp.down_proj.weight"


def _unpack(words, bits, axis_len):
    """int32 words -> unsigned values, lowest bits first, along the packed axis (axis 0 of qweight)."""
    per = 32 // bits
    u = words.view(np.uint32)
    shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
    vals = (u[:, None, :] >> shifts[None, :, None]) & np.uint32(2**bits - 1)
    return vals.reshape(axis_len, -1)


def _tensor(folder, name):
    tensors, _ = st.read_header(os.path.join(folder, "model.safetensors"))
    with st.TensorMap(tensors[name]) as a:
        return np.array(a)


@pytest.mark.parametrize("scheme, fmt", [("sym", "gptq"), ("asym", "gptq_v2")], ids=["sym-v1", "asym-v2"])
@pytest.mark.parametrize("group", [32, 48], ids=["g32", "g48-tail"])
def test_gptq_layout_decodes_to_fake_quant(tiny_bf16, tmp_path, scheme, fmt, group):
    out = str(tmp_path / "out")
    assert main(["quantize", tiny_bf16, out, "--format", "gptq", "--scheme", scheme, "--group-size", str(group),
                 "--quiet"]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert cfg["checkpoint_format"] == fmt and cfg["bits"] == 4 and cfg["sym"] == (scheme == "sym")
    p = LINEAR[: -len(".weight")]
    qweight, qzeros = _tensor(out, p + ".qweight"), _tensor(out, p + ".qzeros")
    scales, g_idx = _tensor(out, p + ".scales").astype(np.float32), _tensor(out, p + ".g_idx")
    w = read_tensor(tiny_bf16, LINEAR)
    out_f, in_f = w.shape
    q = _unpack(qweight, 4, in_f).astype(np.float32)  # (in, out)
    z = _unpack(qzeros.T.copy(), 4, out_f).T.astype(np.float32)  # (n_groups, out)
    if fmt == "gptq":
        z = z + 1  # v1 stores zero - 1
    np.testing.assert_array_equal(g_idx, np.arange(in_f) // group)
    decoded = ((q - z[g_idx]) * scales[g_idx]).T

    codes, scale, zp = nbwoq.quant_tensor(w.copy(), bits=4, group_size=group, scheme=scheme, return_int=True)
    s16 = scale.astype(np.float16).astype(np.float32)
    codes = nbwoq.quant_weight_w_scale(w.copy(), s16, zp, group_size=group, bits=4)
    zp = np.zeros_like(s16) if zp is None else zp
    gi = np.arange(in_f) // group
    np.testing.assert_array_equal(decoded, (codes - zp[:, gi]) * s16[:, gi])
    assert _tensor(out, "model.embed_tokens.weight").dtype == np.uint16  # copied as stored (bfloat16)


def test_gptq_refuses_what_it_cannot_store(tiny_bf16, tmp_path, capsys):
    assert main(["quantize", tiny_bf16, str(tmp_path / "o"), "--format", "gptq", "--dtype", "nf4"]) == 1
    assert "--dtype int" in capsys.readouterr().err
    single = str(tmp_path / "m.safetensors")
    shutil.copy(os.path.join(tiny_bf16, "model.safetensors"), single)
    assert main(["quantize", single, str(tmp_path / "o"), "--format", "gptq"]) == 1
    assert "Hugging Face folder" in capsys.readouterr().err


@pytest.mark.parametrize("args, method", [
    ([], "rtn"),
    (["--clip", "group"], "rtn+clip-group"),
    (["--method", "refit"], "refit"),
    (["--method", "refit", "--clip", "tensor"], "refit+clip-tensor"),
    (["--method", "hqq"], "hqq"),
], ids=["rtn", "rtn-clip", "refit", "refit-clip", "hqq"])
def test_config_meta_names_the_method_that_made_the_codes(tiny_bf16, tmp_path, args, method):
    out = str(tmp_path / "out")
    assert main(["quantize", tiny_bf16, out, "--format", "gptq", "--quiet", *args]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert cfg["meta"]["method"] == method
