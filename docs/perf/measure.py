"""Measure nbwoq against the plain-torch reference formula and the memory floor, for the docs.

Times, in one process and one run, each function over a few weight sizes: nbwoq, the
plain-torch implementation of the reference's formula that the asv benchmarks use (both
taken from the registry ``tests/implementations.py``; the torch formulas live in
``asv_bench/benchmarks/common.py``) and the memory floor (one in-place ``w *= 1.0``,
``common.floor_pass``; for 16-bit floats the same pass over the weight's bytes as
``uint16``, because NumPy multiplies ``ml_dtypes.bfloat16`` through a slow conversion
loop that would flatter nbwoq). The three calls take turns
(``common.interleaved_medians``) so machine load falls on all of them alike;
the figures that matter are the ratios. Also recorded: the thread scaling of one call,
the first call with a cold and a warm JIT cache, the clip-search error report
(``asv_bench/clip_error_report.py``'s functions) and, with ``--asv-results``, every
``track_`` value of an asv results folder.

Writes ``docs/perf/results.json``, which is committed; the docs build renders the
performance page and its plot from it and never runs a benchmark. The machine is
shared, so run it under the benchmark lock, from the repository root::

    flock /tmp/nbwoq-bench.lock python docs/perf/measure.py --asv-results asv_bench/results

``--quick`` uses small sizes and one repeat (to check the script, not for the docs).
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "asv_bench"))  # the benchmarks package, as asv imports it

import torch  # noqa: E402  (first, as nbwoq_torch does: one OpenMP pool for both)

import nbwoq  # noqa: E402
from benchmarks import common  # noqa: E402  (puts tests/ on sys.path: the registry)
from implementations import IMPLEMENTATIONS  # noqa: E402

OUT = ROOT / "docs" / "perf" / "results.json"
SIZES = [(1024, 1024), (2048, 2048), (4096, 4096), (11008, 4096)]
# The plain-torch clip search quantizes the weight 40 times: the largest size would take
# minutes per call.
CLIP_SIZES = SIZES[:3]


def cases():
    """(function label, dtype, sizes, operation of the registry, its keyword arguments,
    nbwoq weight is read-only, repeat)."""
    int4 = dict(bits=4, group_size=128, scheme="asym")
    return [
        ("quant_tensor int4 asym g128", "float32", SIZES, "quant_tensor", int4, False, 11),
        ("quant_tensor int4 asym g128", "bfloat16", SIZES, "quant_tensor", int4, False, 11),
        ("quant_tensor int4 sym g32", "float32", SIZES, "quant_tensor", dict(bits=4, group_size=32, scheme="sym"),
         False, 11),
        ("quant_tensor nf4 g64", "float32", SIZES, "quant_tensor_codebook", dict(group_size=64, dtype="nf4"),
         False, 11),
        ("search_clip int4 asym g128", "float32", CLIP_SIZES, "search_clip", dict(int4, dtype="int"), True, 3),
    ]


def warm_up():
    common.warm_up()
    common.warm_up_clip()
    common.warm_up_codebook()


def measure_speed(quick):
    rows = []
    for label, dtype, sizes, op, kwargs, read_only, repeat in cases():
        kernel, baseline = IMPLEMENTATIONS[op]["kernel"], IMPLEMENTATIONS[op]["torch"]
        for shape in ([(256, 512), (512, 1024)] if quick else sizes):
            reps = 1 if quick else repeat

            def nb_setup(shape=shape, dtype=dtype, read_only=read_only):
                return common.weight(shape, dtype) if read_only else common.fresh(shape, dtype)

            t_nb, t_torch, t_floor = common.interleaved_medians(
                [lambda w, kwargs=kwargs, kernel=kernel: kernel.call(w, **kwargs),
                 lambda t, kwargs=kwargs, baseline=baseline: baseline.call(t, **kwargs), common.floor_pass],
                [nb_setup, lambda shape=shape, dtype=dtype: common.torch_copy(shape, dtype),
                 lambda shape=shape, dtype=dtype: common.fresh(shape, dtype)], reps)
            row = dict(function=label, dtype=dtype, shape=list(shape), elements=shape[0] * shape[1],
                       nbwoq_s=t_nb, torch_s=t_torch, floor_s=t_floor, speedup_vs_torch=t_torch / t_nb,
                       ratio_to_floor=t_nb / t_floor, repeat=reps)
            rows.append(row)
            print(f"{label:>28} {dtype:>8} {shape[0]:>5}x{shape[1]:<5} nbwoq {t_nb * 1e3:9.2f} ms  "
                  f"torch {t_torch * 1e3:9.2f} ms  floor {t_floor * 1e3:8.2f} ms  "
                  f"x{t_torch / t_nb:6.1f} faster  {t_nb / t_floor:5.2f}x floor", flush=True)
    return rows


def measure_threads(quick):
    shape = (512, 1024) if quick else (4096, 4096)
    before = nbwoq.get_num_threads()
    rows = []
    try:
        for n in range(1, nbwoq.get_num_threads() + 1):
            nbwoq.set_num_threads(n)
            t = common.median_time(lambda w: nbwoq.quant_tensor(w, bits=4, group_size=128),
                                   lambda: common.fresh(shape, "float32"), 1 if quick else 7)
            rows.append(dict(threads=n, seconds=t, shape=list(shape)))
    finally:
        nbwoq.set_num_threads(before)
    return rows


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np, nbwoq
t1 = time.perf_counter()
nbwoq.quant_tensor(np.ones((64, 256), np.float32), bits=4, group_size=128)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def measure_first_call():
    """Import and first ``quant_tensor`` call in a fresh process: cold cache, then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = {}
        for state in ("cold", "warm"):
            text = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True, capture_output=True,
                                  text=True).stdout
            import_s, call_s = map(float, text.split())
            out[state] = dict(import_s=import_s, first_call_s=call_s)
        return out


def measure_clip_error():
    import clip_error_report as report

    rows = []
    weights = [(f"golden {label}", w) for label, w in report.golden_weights().items()]
    weights.append(("gaussian, 0.1% outliers x20", np.ascontiguousarray(common.weight("4096x4096", "float32"))))
    for name, w in weights:
        for fmt, kw in report.FORMATS.items():
            ratio = nbwoq.search_clip(w, **kw)
            per_group = nbwoq.search_clip(w, per_group=True, **kw)
            e_none = report.total_error(w, 1.0, kw)
            e_pt = report.total_error(w, ratio, kw)
            e_pg = report.total_error(w, per_group, kw)
            rows.append(dict(weight=name, shape=list(w.shape), format=fmt, no_clip=e_none, per_tensor=e_pt,
                             per_tensor_ratio=ratio, per_group=e_pg,
                             per_group_ratio_mean=float(np.mean(per_group)),
                             per_tensor_vs_none_percent=100 * (1 - e_pt / e_none),
                             per_group_vs_per_tensor_percent=100 * (1 - e_pg / e_pt)))
    return rows


def read_asv(folder):
    """The ``track_`` values of an asv results folder, one row per benchmark and parameter
    combination (the newest result where several runs have one)."""
    folder = pathlib.Path(folder)
    units = {}
    index = folder / "benchmarks.json"
    if index.exists():
        units = {k: v.get("unit") for k, v in json.loads(index.read_text()).items() if isinstance(v, dict)}
    rows = {}
    for path in sorted(folder.glob("*/*.json")):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        columns = data.get("result_columns", [])
        for name, entry in data.get("results", {}).items():
            if ".track_" not in name:
                continue
            record = dict(zip(columns, entry))
            values, params = record.get("result"), record.get("params") or []
            if values is None:
                continue
            combos = [[]]
            for choices in params:
                combos = [c + [p] for c in combos for p in choices]
            for combo, value in zip(combos, values if params else [values]):
                if value is None or value != value:  # not run (asv stores NaN for unselected parameters)
                    continue
                key = (name, tuple(combo))
                row = dict(benchmark=name, params=[str(p).strip("'") for p in combo], value=float(value),
                           unit=units.get(name), commit=data.get("commit_hash", "")[:10], date=data.get("date", 0),
                           machine=data.get("params", {}))
                if key not in rows or rows[key]["date"] < row["date"]:
                    rows[key] = row
    return sorted(rows.values(), key=lambda r: (r["benchmark"], r["date"]))


def machine():
    import numba

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return dict(
        cpu=cpu, cores=os.cpu_count(), memory_bytes=mem, os=platform.platform(),
        python=platform.python_version(), numpy=np.__version__, numba=numba.__version__,
        torch=torch.__version__, nbwoq=nbwoq.__version__, commit=commit,
        nbwoq_threads=nbwoq.get_num_threads(), torch_threads=torch.get_num_threads(),
        threading_layer=numba.threading_layer(), load_average=list(os.getloadavg()),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a check, not for the docs)")
    parser.add_argument("--asv-results", help="an asv results folder to include (asv_bench/results)")
    parser.add_argument("--out", default=str(OUT), help=f"output JSON (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    warm_up()
    result = dict(machine=machine())
    result["speed"] = measure_speed(args.quick)
    result["threads"] = measure_threads(args.quick)
    result["first_call"] = measure_first_call()
    result["clip_error"] = [] if args.quick else measure_clip_error()
    result["asv"] = read_asv(args.asv_results) if args.asv_results else []
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["machine"]["run_seconds"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} in {result['machine']['run_seconds']:.0f} s")


if __name__ == "__main__":
    main()
