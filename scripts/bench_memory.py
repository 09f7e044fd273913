"""Peak resident memory of ``nbwoq quantize`` on one large tensor, for every path.

One bfloat16 tensor of 256 MiB (8192 x 16384) in a Hugging Face-style folder is
quantized into each output format (and with each clip search) by the real command in a
fresh process; the command reports its own peak RSS (``VmHWM``). Printed as a multiple
of the tensor's size, next to the same process's idle baseline (Python, NumPy, Numba
and the kernels loaded, measured by quantizing a tiny tensor).

    python scripts/bench_memory.py [--rows 8192 --cols 16384]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MiB = 1 << 20
PATHS = {
    "nbwoq (one pass)": [],
    "nbwoq --clip group": ["--clip", "group"],
    "nbwoq --clip tensor": ["--clip", "tensor"],
    "nbwoq nf4 (codebook)": ["--dtype", "nf4"],
    "gguf Q4_0": ["--format", "gguf"],
    "gptq": ["--format", "gptq"],
}


def _write_source(folder, rows, cols):
    from nbwoq.formats import safetensors_io as st

    os.makedirs(folder)
    rng = np.random.default_rng(0)
    specs = [("model.layers.0.mlp.down_proj.weight", "BF16", (rows, cols))]
    w = st.StreamWriter(os.path.join(folder, "model.safetensors"), specs)
    block = 256
    out = np.empty((rows, cols), np.uint16)
    for r in range(0, rows, block):
        x = rng.standard_normal((min(block, rows - r), cols), dtype=np.float32)
        out[r:r + block] = (x.view(np.uint32) >> 16).astype(np.uint16)
    w.write(specs[0][0], out)
    w.close()
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=rows, intermediate_size=cols,
               num_hidden_layers=1, num_attention_heads=max(rows // 128, 1), vocab_size=32000)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return rows * cols * 2


def _peak(src, out, extra):
    report = out + ".json"
    cmd = [sys.executable, "-m", "nbwoq", "quantize", src, out, "--quiet", "--report", report, *extra]
    if "gguf" in extra:
        cmd[5] = out + ".gguf"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(report) as f:
        return json.load(f)["summary"]["peak_rss_bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=16384)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nbytes = _write_source(os.path.join(tmp, "big"), args.rows, args.cols)
        _write_source(os.path.join(tmp, "tiny"), 32, 256)
        base = _peak(os.path.join(tmp, "tiny"), os.path.join(tmp, "tiny-out"), [])
        print(f"tensor: {args.rows} x {args.cols} bfloat16 = {nbytes / MiB:.0f} MiB; "
              f"idle baseline (tiny tensor): {base / MiB:.0f} MiB")
        print(f"{'path':<24} {'peak RSS':>10} {'x tensor':>9} {'above baseline':>15}")
        for i, (name, extra) in enumerate(PATHS.items()):
            peak = _peak(os.path.join(tmp, "big"), os.path.join(tmp, f"out{i}"), extra)
            print(f"{name:<24} {peak / MiB:8.0f} MiB {peak / nbytes:8.2f}x {(peak - base) / nbytes:14.2f}x")


if __name__ == "__main__":
    main()
