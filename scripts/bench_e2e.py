"""End-to-end throughput and peak memory of ``nbwoq quantize`` against the kernel alone.

On a generated ~1.1B-parameter bfloat16 Llama checkpoint (TinyLlama's shape, written
once to ``--dir``), int4 asym g128 RTN, nbwoq format, in one run:

* kernel-only: the core call ``quant_tensor(work, bits=4, group_size=128,
  return_int=True)`` on a float32 copy of each quantized tensor held in memory, timed
  alone, summed (the issue's yardstick); also the command's own one-pass kernel
  (``quantize_packed``: codes, packing and error sums straight from the bfloat16
  values) on the tensors held in memory;
* I/O floor: what the machine needs for the bytes alone, without any arithmetic:
  mapping every source page once, and writing the output's byte count and fsyncing it
  (measured after each command run; the best is kept);
* end to end: the ``nbwoq`` command in a fresh process, ``--runs`` times (medians:
  reading, quantizing, packing, error measurement, writing, fsync, report), wall time
  of the process, and the
  command's own in-process time from its report (the process wall adds Python's and
  Numba's start, about half a second);
* peak RSS of that process (its own ``VmHWM``, from its report) against the target
  ``2 x largest tensor + 300 MiB``.

Run it alone: ``flock /tmp/nbwoq-bench.lock python scripts/bench_e2e.py``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

import nbwoq
from nbwoq.formats import safetensors_io as st
from nbwoq.command.demo_model import ONE_B, write_checkpoint
from nbwoq.formats.options import QuantOptions
from nbwoq.formats.quantizer import Scratch, quantize_packed
from nbwoq.formats.storage import widen
from nbwoq.formats.source import Source

MiB = 1024 * 1024


def kernel_only(src, options, repeats):
    """Summed best-of-``repeats`` times: (params, core quant_tensor on float32, one-pass kernel)."""
    source = Source(src)
    core = one_pass = 0.0
    params = 0
    scratch = Scratch()
    for _, info in source.tensors():
        if not options.selects(info.name, info.shape, info.dtype):
            continue
        with source.open(info) as (array, dtype_name):
            held = np.array(array)
            work = widen(array, dtype_name)
        quantize_packed(held, dtype_name, options, info.name, scratch, np.uint8)  # sizes the buffers
        best_core = best_pass = float("inf")
        for _ in range(repeats):
            buf = work.copy()
            t0 = time.perf_counter()
            nbwoq.quant_tensor(buf, bits=4, group_size=128, scheme="asym", return_int=True)
            best_core = min(best_core, time.perf_counter() - t0)
            t0 = time.perf_counter()
            quantize_packed(held, dtype_name, options, info.name, scratch, np.uint8)
            best_pass = min(best_pass, time.perf_counter() - t0)
        core += best_core
        one_pass += best_pass
        params += info.size
    return params, core, one_pass


def io_floor(src, out_bytes, folder):
    """Seconds to map and touch every page of the source once, and to write ``out_bytes``
    bytes (in 64 MiB writes) and fsync them: the bytes' own cost on this machine.
    Returns ``(read_s, write_s, path)``; the caller removes the file at ``path``."""
    source = Source(src)
    t0 = time.perf_counter()
    for _, info in source.tensors():
        with source.open(info) as (array, _):
            flat = array.reshape(-1).view(np.uint8) if array.size else None
            if flat is not None:
                int(flat[::4096].sum())
    read = time.perf_counter() - t0
    chunk = np.full(64 * MiB, 7, dtype=np.uint8)
    path = os.path.join(folder, "io-floor.bin")
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left, offset = out_bytes, 0
        while left > 0:
            n = f.write(memoryview(chunk[:min(left, chunk.size)]))
            if st._START_WRITEBACK is not None:  # the command's own way: start each write early
                st._START_WRITEBACK(f.fileno(), offset, n)
            left -= n
            offset += n
        os.fsync(f.fileno())
    write = time.perf_counter() - t0
    return read, write, path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("NBWOQ_BENCH_DIR", "/tmp/nbwoq-bench-1b"))
    parser.add_argument("--repeats", type=int, default=2, help="kernel timings per tensor (best kept)")
    parser.add_argument("--runs", type=int, default=3, help="command runs, each followed by the I/O floor (medians)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each measurement")
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

    params, k_seconds, pass_seconds = kernel_only(src, options, args.repeats)

    # The disk is shared and its speed swings: the command and the I/O floor alternate,
    # and the medians are compared.
    report_path = os.path.join(args.dir, "report.json")
    walls, inprocs, peaks, reads, writes = [], [], [], [], []
    def settle():
        # Each measurement starts with nothing queued for the disk: the virtual disk here
        # absorbs a burst of writes, then slows down while it drains them.
        os.sync()
        time.sleep(args.settle)

    for _ in range(args.runs):
        settle()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nbwoq", "quantize", src, out, "--quiet", "--report", report_path],
                       check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        summary = json.load(open(report_path))["summary"]
        inprocs.append(summary["seconds"])
        peaks.append(summary["peak_rss_bytes"])  # the command's own VmHWM (ru_maxrss would include this parent)
        # The floor is measured before the output is deleted: this disk is mounted with
        # online discard, and writes right after freeing 700 MiB wait for it.
        settle()
        read, write, floor_file = io_floor(src, summary["bytes_out"], args.dir)
        shutil.rmtree(out)
        os.remove(floor_file)
        reads.append(read)
        writes.append(write)
    e2e, inproc = statistics.median(walls), statistics.median(inprocs)
    # A floor is the least the bytes take: the best of the runs (the disk has slow spells).
    read_floor, write_floor = min(reads), min(writes)
    peak = max(peaks)

    figures = dict(
        checkpoint_bytes=total, quantized_params=params, largest_tensor_bytes=largest,
        output_bytes=summary["bytes_out"],
        kernel_only_s=k_seconds, kernel_only_params_per_s=params / k_seconds,
        one_pass_kernel_s=pass_seconds,
        io_floor_read_s=read_floor, io_floor_write_fsync_s=write_floor,
        end_to_end_s=e2e, end_to_end_params_per_s=params / e2e, end_to_end_runs_s=walls,
        in_process_runs_s=inprocs, io_floor_runs_s=[r + w for r, w in zip(reads, writes)],
        in_process_s=inproc,
        ratio=k_seconds / e2e, ratio_in_process=k_seconds / inproc,
        peak_rss_bytes=peak, rss_target_bytes=2 * largest + 300 * MiB,
        threads=nbwoq.get_num_threads(),
    )
    print(f"checkpoint {total / 2**30:.2f} GiB, {params / 1e6:.0f} M quantized params, largest tensor "
          f"{largest / MiB:.0f} MiB, output {summary['bytes_out'] / MiB:.0f} MiB")
    print(f"kernel only  {k_seconds:7.2f} s  {params / k_seconds / 1e6:7.1f} M params/s  (core quant_tensor, float32 in memory)")
    print(f"one-pass     {pass_seconds:7.2f} s  {params / pass_seconds / 1e6:7.1f} M params/s  "
          "(the command's kernel: codes, packing, error; bfloat16 in memory)")
    print(f"I/O floor    {read_floor + write_floor:7.2f} s  (best of {args.runs}: map every source page "
          f"{read_floor:.2f} s; write + fsync the output's bytes {write_floor:.2f} s)")
    print(f"end to end   {e2e:7.2f} s  {params / e2e / 1e6:7.1f} M params/s  ({figures['ratio']:.0%} of kernel-only; "
          f"median of {args.runs}, best {min(walls):.2f} s)")
    print(f"in-process   {inproc:7.2f} s  {params / inproc / 1e6:7.1f} M params/s  "
          f"({figures['ratio_in_process']:.0%} of kernel-only; median, best {min(inprocs):.2f} s)")
    print(f"peak RSS     {peak / MiB:7.0f} MiB (target <= {figures['rss_target_bytes'] / MiB:.0f} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
