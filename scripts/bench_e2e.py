"""End-to-end throughput and peak memory of ``nbwoq quantize`` against the kernel alone.

On a generated ~1.1B-parameter bfloat16 Llama checkpoint (TinyLlama's shape, written
once to ``--dir``), int4 asym g128 RTN, nbwoq format, in one run:

* kernel-only: the core call the command makes for each quantized tensor
  (``quant_tensor(work, bits=4, group_size=128, return_int=True)`` on its float32
  working copy), timed alone, summed;
* end to end: the ``nbwoq`` command in a fresh process (reading, decoding, quantizing,
  packing, error measurement, writing, report), wall time of the process;
* peak RSS of that process (its own ``VmHWM``, from its report) against the target
  ``2 x largest tensor + 300 MiB``.

Run it alone: ``flock /tmp/nbwoq-bench.lock python scripts/bench_e2e.py``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time


import nbwoq
from nbwoq.checkpoint import ONE_B, write_checkpoint
from nbwoq.formats.quantizer import QuantOptions, working_copy
from nbwoq.formats.source import Source

MiB = 1024 * 1024


def kernel_only(src, options, repeats):
    source = Source(src)
    seconds, params = 0.0, 0
    for _, info in source.tensors():
        if not options.selects(info.name, info.shape, info.dtype):
            continue
        with source.open(info) as (array, dtype_name):
            work = working_copy(array, dtype_name)
        best = float("inf")
        for _ in range(repeats):
            buf = work.copy()
            t0 = time.perf_counter()
            nbwoq.quant_tensor(buf, bits=4, group_size=128, scheme="asym", return_int=True)
            best = min(best, time.perf_counter() - t0)
        seconds += best
        params += info.size
    return params, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("NBWOQ_BENCH_DIR", "/tmp/nbwoq-bench-1b"))
    parser.add_argument("--repeats", type=int, default=2, help="kernel timings per tensor (best kept)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    src = os.path.join(args.dir, "src")
    if not os.path.exists(os.path.join(src, "config.json")):
        t0 = time.perf_counter()
        write_checkpoint(src, **ONE_B)
        print(f"generated {src} in {time.perf_counter() - t0:.1f} s", flush=True)
    source = Source(src)
    largest = max(info.nbytes for _, info in source.tensors())
    total = sum(info.nbytes for _, info in source.tensors())
    options = QuantOptions(4, 128, "asym")

    # warm the JIT cache and the page cache once, untimed
    out = os.path.join(args.dir, "out")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "nbwoq", "quantize", src, out, "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(out)

    params, k_seconds = kernel_only(src, options, args.repeats)

    report_path = os.path.join(args.dir, "report.json")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nbwoq", "quantize", src, out, "--quiet", "--report", report_path],
                   check=True, stdout=subprocess.DEVNULL)
    e2e = time.perf_counter() - t0
    summary = json.load(open(report_path))["summary"]
    peak = summary["peak_rss_bytes"]  # the command's own VmHWM (ru_maxrss would include this parent)
    shutil.rmtree(out)

    figures = dict(
        checkpoint_bytes=total, quantized_params=params, largest_tensor_bytes=largest,
        kernel_only_s=k_seconds, kernel_only_params_per_s=params / k_seconds,
        end_to_end_s=e2e, end_to_end_params_per_s=params / e2e,
        in_process_s=summary["seconds"],
        ratio=(params / e2e) / (params / k_seconds),
        peak_rss_bytes=peak, rss_target_bytes=2 * largest + 300 * MiB,
        threads=nbwoq.get_num_threads() if hasattr(nbwoq, "get_num_threads") else None,
    )
    print(f"checkpoint {total / 2**30:.2f} GiB, {params / 1e6:.0f} M quantized params, largest tensor {largest / MiB:.0f} MiB")
    print(f"kernel only  {k_seconds:7.2f} s  {params / k_seconds / 1e6:7.1f} M params/s")
    print(f"end to end   {e2e:7.2f} s  {params / e2e / 1e6:7.1f} M params/s  ({figures['ratio']:.0%} of kernel-only; "
          f"in-process {summary['seconds']:.2f} s)")
    print(f"peak RSS     {peak / MiB:7.0f} MiB (target <= {figures['rss_target_bytes'] / MiB:.0f} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
