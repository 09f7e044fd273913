"""nbwoq's GGUF ``--type`` output against llama.cpp's own quantizer, and their speed.

llama.cpp's quantizer is reached through the ``llama_cpp`` package (the library that
``llama-quantize`` wraps: ``llama_model_quantize`` with llama-quantize's parameters),
built from its source release by ``scripts/integration.sh``. Three checks:

1. byte identity: for every type, ``nbwoq quantize SRC --type T --pure --method reference`` equals
   ``llama-quantize --pure SRC T`` tensor for tensor;
2. mixes: the per-tensor types of Q4_K_S, Q4_K_M, Q5_K_S and Q5_K_M equal llama's;
3. speed: wall time and peak RSS of both on the same BF16 GGUF, same thread count.

    python scripts/llama_quantize_check.py WORK [--nbwoq-python PY] [--skip-speed | --speed-only]

Runs in an environment with ``llama_cpp``; nbwoq runs as its own command in the
project's Python (``--nbwoq-python``), so each tool's memory is its own process's.
"""

import argparse
import json
import os
import subprocess
import sys
import time

PURE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K_S", "Q5_K_S", "Q6_K", "IQ4_NL"]
MIXES = ["Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M"]
SPEED_TYPES = ["Q4_0", "Q4_K_M"]
_LLAMA = r"""
import ctypes, sys, time, resource, llama_cpp, gguf
src, dst, name, pure, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = gguf.LlamaFileType["MOSTLY_" + name].value
params.pure = pure
params.nthread = threads
t0 = time.perf_counter()
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
print(rc, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def llama_quantize(src, dst, name, pure, threads=2):
    out = _run([sys.executable, "-c", _LLAMA, src, dst, name, "1" if pure else "0", str(threads)]).split()
    if out[-3] != "0":
        sys.exit(f"llama_model_quantize returned {out[-3]} for {name}")
    return float(out[-2]), int(out[-1])


def nbwoq_quantize(py, src, dst, name, pure, threads=2, method="reference"):
    report = dst + ".json"
    t0 = time.perf_counter()
    _run([py, "-m", "nbwoq", "quantize", src, dst, "--type", name, "--threads", str(threads), "--quiet",
          "--overwrite", "--report", report, "--method", method] + (["--pure"] if pure else []))
    wall = time.perf_counter() - t0
    with open(report) as f:
        summary = json.load(f)["summary"]
    # in-process time, as llama's is measured around its one call; the process wall beside it
    return summary["seconds"], summary["peak_rss_bytes"], wall


def tensors(path):
    import gguf

    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def compare_bytes(a, b):
    import numpy as np

    ta, tb = tensors(a), tensors(b)
    bad = [n for n in ta if n not in tb or ta[n].tensor_type != tb[n].tensor_type
           or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))]
    return len(ta), bad + [n for n in tb if n not in ta]


def _speed(py, work):
    """Check 3: wall time and peak RSS of both tools on the generated 1.1B model's BF16 GGUF."""
    print("== speed: generated 1.1B model, BF16 GGUF, 2 threads each")
    big, big_src = os.path.join(work, "1b"), os.path.join(work, "1b-bf16.gguf")
    if not os.path.exists(big_src):
        _run([py, "-m", "nbwoq", "generate", big, "--size", "1b"])
        _run([py, "-m", "nbwoq", "quantize", big, big_src, "--type", "BF16", "--quiet"])
    for name in SPEED_TYPES:
        t_ours, rss_ours, wall = nbwoq_quantize(py, big_src, os.path.join(work, f"1b-nbwoq-{name}.gguf"), name,
                                                False)
        t_llama, rss_llama = llama_quantize(big_src, os.path.join(work, f"1b-llama-{name}.gguf"), name, False)
        print(f"{name:8s} nbwoq {t_ours:6.1f} s ({wall:.1f} s with start-up), peak {rss_ours / 2**20:5.0f} MiB | "
              f"llama.cpp {t_llama:6.1f} s, peak {rss_llama / 2**20:5.0f} MiB | "
              f"nbwoq/llama time {t_ours / t_llama:.2f}x")
        if name == "Q4_K_M":  # the search method, started from the reference's blocks
            dst = os.path.join(work, f"1b-nbwoq-{name}-search.gguf")
            t_search, rss_search, _ = nbwoq_quantize(py, big_src, dst, name, False, method="search")
            print(f"{name:8s} nbwoq --method search {t_search:6.1f} s, peak {rss_search / 2**20:5.0f} MiB | "
                  f"search/llama time {t_search / t_llama:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work")
    parser.add_argument("--nbwoq-python", default="python")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true", help="only the speed comparison (check 3)")
    args = parser.parse_args()
    py, work = args.nbwoq_python, args.work
    os.makedirs(work, exist_ok=True)
    if args.speed_only:
        _speed(py, work)
        return 0
    demo, src = os.path.join(work, "demo"), os.path.join(work, "demo-bf16.gguf")
    if not os.path.exists(src):
        _run([py, "-m", "nbwoq", "generate", demo])
        _run([py, "-m", "nbwoq", "quantize", demo, src, "--type", "BF16", "--quiet"])
    failures = 0
    print("== byte identity, --pure (demo model, hidden 512; ffn_down rows of 1408 fall back)")
    for name in PURE_TYPES:
        ours, theirs = os.path.join(work, f"nbwoq-{name}.gguf"), os.path.join(work, f"llama-{name}.gguf")
        nbwoq_quantize(py, src, ours, name, True)
        llama_quantize(src, theirs, name, True)
        n, bad = compare_bytes(ours, theirs)
        failures += bool(bad)
        print(f"{name:8s} {n - len(bad)}/{n} tensors byte-identical" + (f"; differ: {bad[:4]}" if bad else ""))
    print("== per-tensor types of the mixes")
    for name in MIXES:
        ours, theirs = os.path.join(work, f"nbwoq-mix-{name}.gguf"), os.path.join(work, f"llama-mix-{name}.gguf")
        nbwoq_quantize(py, src, ours, name, False)
        llama_quantize(src, theirs, name, False)
        ta, tb = tensors(ours), tensors(theirs)
        bad = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type]
        failures += bool(bad)
        print(f"{name:8s} {len(ta) - len(bad)}/{len(ta)} tensor types equal"
              + (f"; differ: {[(n, ta[n].tensor_type.name, tb[n].tensor_type.name) for n in bad[:4]]}" if bad else ""))
    if not args.skip_speed:
        _speed(py, work)
    print("llama_quantize_check: " + ("all passed" if not failures else f"{failures} check(s) FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
