"""Per-tensor vs per-group clip search: total squared quantization error.

For each weight and format it prints the total squared error of ``quant_tensor`` with
no clipping (ratio 1.0), with the best per-tensor ratio (``search_clip``) and with each
group's best ratio (``search_clip(..., per_group=True)``), and how much per-group
clipping removes relative to per-tensor. Weights: the four golden ``search_clip``
weights (tests/golden/search_clip.npz) and the seeded 4096x4096 Gaussian weight with
0.1% outliers of the benchmarks. Formats: int4 asym g128 and nf4 g64.

Run from the repository root: ``python asv_bench/clip_error_report.py``.
"""

import json
import pathlib
import sys

import numpy as np

import nbwoq

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "asv_bench" / "benchmarks"))
import common  # noqa: E402

FORMATS = {
    "int4 asym g128": dict(bits=4, group_size=128, scheme="asym", dtype="int"),
    "nf4 g64": dict(bits=4, group_size=64, scheme="asym", dtype="nf4"),
}


def golden_weights():
    """The distinct weights of the golden search_clip cases, by input label."""
    golden = ROOT / "tests" / "golden"
    with open(golden / "MANIFEST.json") as f:
        cases = json.load(f)["files"]["search_clip.npz"]["cases"]
    out = {}
    with np.load(golden / "search_clip.npz") as d:
        for case in cases:
            ref = case["tensor_args"]["m.weight"]
            out.setdefault(case["input_label"], d[ref["key"]].astype(np.float32))
    return out


def total_error(w, quantile, kw):
    q = nbwoq.quant_tensor(w.copy(), quantile=quantile, **kw)
    d = (w - q).astype(np.float64)
    return float(np.sum(d * d))


def report(name, w, kw):
    pt = nbwoq.search_clip(w, **kw)
    pg = nbwoq.search_clip(w, per_group=True, **kw)
    e_none = total_error(w, 1.0, kw)
    e_pt = total_error(w, pt, kw)
    e_pg = total_error(w, pg, kw)
    print(f"{name:>52} {kw['dtype'] if kw['dtype'] != 'int' else 'int4':>5} g{kw['group_size']:<4} "
          f"{e_none:12.5g} {e_pt:12.5g} ({pt:.3f}) {e_pg:12.5g} {100 * (1 - e_pg / e_pt):7.2f}% "
          f"{100 * (1 - e_pt / e_none):7.2f}%")
    return e_pt, e_pg


def main():
    print(f"{'weight':>52} {'fmt':>5} {'group':<5} {'no clip':>12} {'per-tensor (ratio)':>20} "
          f"{'per-group':>12} {'pg vs pt':>8} {'pt vs none':>8}")
    sums = {f: [0.0, 0.0] for f in FORMATS}
    for label, w in golden_weights().items():
        for fname, kw in FORMATS.items():
            e_pt, e_pg = report(f"golden {label} {w.shape[0]}x{w.shape[1]}", w, kw)
            sums[fname][0] += e_pt
            sums[fname][1] += e_pg
    for fname, (e_pt, e_pg) in sums.items():
        print(f"{'golden weights, all four':>52} {fname}: per-tensor {e_pt:.5g}, per-group {e_pg:.5g} "
              f"({100 * (1 - e_pg / e_pt):.2f}% less)")
    w = np.ascontiguousarray(common.weight("4096x4096", "float32"))
    for kw in FORMATS.values():
        report("gaussian 4096x4096, 0.1% outliers x20", w, kw)


if __name__ == "__main__":
    main()
