"""Render the committed measurements (``perf/results.json``) into the docs.

``docs/perf/measure.py`` times nbwoq, the plain-torch reference formula and the memory
floor and writes ``perf/results.json``; this extension turns that file into reST
fragments and a matplotlib plot under ``perf/_generated/`` when the build starts, which
``performance.rst`` and ``guide/clip.rst`` include. Nothing here runs a benchmark: the
pages always show the committed run, with its machine.
"""

import json
import os

from sphinx.util import logging

logger = logging.getLogger(__name__)

GENERATED = os.path.join("perf", "_generated")


def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _size(row):
    r, c = row["shape"]
    return f"{r} x {c}"


def _mb(row):
    return row["elements"] * (2 if row["dtype"] in ("bfloat16", "float16") else 4) / 2**20


def _table(header, rows, widths=None):
    """A reST list-table."""
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header] + rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(lines) + "\n"


def _groups(speed):
    """Rows grouped by (function, dtype), in the order they were measured."""
    groups = {}
    for row in speed:
        groups.setdefault((row["function"], row["dtype"]), []).append(row)
    return groups


def machine_text(m):
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB memory" if m.get("memory_bytes") else ""
    load = m.get("load_average", [None])[0]
    load_end = m.get("load_average_end", [None])[0]
    load_text = ""
    if load is not None:
        load_text = (f" The 1-minute load average was {load:.1f} when the run started and "
                     f"{load_end:.1f} when it ended ({m.get('cores')} cores), so other work shared the machine.")
    return (
        f"Measured on {m['date']} at commit ``{m['commit']}``: {m['cpu']}, {m['cores']} cores{mem}, "
        f"{m['os']}; Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']} "
        f"(threading layer ``{m['threading_layer']}``, {m['nbwoq_threads']} nbwoq threads), torch {m['torch']} "
        f"({m['torch_threads']} threads).{load_text} The run took {m['run_seconds']:.0f} s.\n"
    )


def speed_text(speed):
    out = []
    for (function, dtype), rows in _groups(speed).items():
        title = f"``{function}``, {dtype}"
        out.append(title)
        out.append("~" * len(title))
        out.append("")
        body = [[_size(r), f"{_mb(r):.0f}", _ms(r["nbwoq_s"]), _ms(r["torch_s"]), _ms(r["floor_s"]),
                 f"**{r['speedup_vs_torch']:.1f}x**", f"{r['ratio_to_floor']:.2f}x"] for r in rows]
        out.append(_table(["weight", "MiB", "nbwoq ms", "plain torch ms", "floor ms", "speed-up vs torch",
                           "time / floor"], body, [16, 8, 12, 14, 10, 14, 12]))
    return "\n".join(out)


def threads_text(rows):
    if not rows:
        return ""
    base = rows[0]["seconds"]
    body = [[str(r["threads"]), _ms(r["seconds"]), f"{base / r['seconds']:.2f}x"] for r in rows]
    r, c = rows[0]["shape"]
    return (f"``quant_tensor`` int4 asym g128 on a {r} x {c} float32 weight, by nbwoq thread count:\n\n"
            + _table(["threads", "ms", "speed-up over 1 thread"], body))


def first_call_text(first):
    if not first:
        return ""
    body = [[state + (" (empty ``NUMBA_CACHE_DIR``: every kernel compiled)" if state == "cold" else
                      " (the same cache, second process)"),
             f"{v['import_s']:.2f}", f"{v['first_call_s']:.2f}"] for state, v in first.items()]
    return _table(["JIT cache", "import nbwoq, s", "first quant_tensor call, s"], body, [50, 20, 30])


def clip_text(rows):
    if not rows:
        return ""
    body = []
    for r in rows:
        name = r["weight"].replace("golden ", "")
        body.append([f"{name} ({r['shape'][0]} x {r['shape'][1]})", r["format"], f"{r['no_clip']:.5g}",
                     f"{r['per_tensor']:.5g} ({r['per_tensor_ratio']:.3f})",
                     f"{r['per_tensor_vs_none_percent']:.2f}%",
                     f"{r['per_group']:.5g} (mean {r['per_group_ratio_mean']:.3f})",
                     f"**{r['per_group_vs_per_tensor_percent']:.2f}%**"])
    return _table(["weight", "format", "no clip", "per tensor (ratio)", "less than no clip",
                   "per group (ratios)", "less than per tensor"], body, [26, 12, 10, 16, 10, 16, 10])


def clip_summary(rows):
    """Per format: the summed error of all weights, per tensor and per group."""
    sums = {}
    for r in rows:
        s = sums.setdefault(r["format"], [0.0, 0.0, 0.0])
        s[0] += r["no_clip"]
        s[1] += r["per_tensor"]
        s[2] += r["per_group"]
    return {fmt: dict(per_tensor_vs_none=100 * (1 - pt / none), per_group_vs_per_tensor=100 * (1 - pg / pt))
            for fmt, (none, pt, pg) in sums.items()}


def asv_text(rows):
    if not rows:
        return ("No asv results were found when ``measure.py`` ran (``asv_bench/results`` is "
                "not committed); run the asv suite and then ``measure.py --asv-results "
                "asv_bench/results`` to include them.\n")
    machines = sorted({f"{r['machine'].get('machine', '?')} ({r['machine'].get('cpu', '?')}, "
                       f"{r['machine'].get('num_cpu', '?')} cores)" for r in rows})
    body = [[f"``{r['benchmark'].replace('.track_', ' track_')}``", ", ".join(r["params"]) or "-",
             f"{r['value']:.3g}", r["unit"] or "", f"``{r['commit']}``"] for r in rows]
    return (f"The ``track_`` values of the asv results present when ``measure.py`` ran (asv machine "
            f"{', '.join(machines)}; the newest result of each benchmark and parameter set):\n\n"
            + _table(["benchmark", "parameters", "value", "unit", "commit"], body, [44, 26, 8, 12, 10]))


def plot(speed, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(_groups(speed).items())
    cols = 3
    nrows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, ((function, dtype), rows) in zip(axes.flat, groups):
        x = [r["elements"] / 1e6 for r in rows]
        ax.loglog(x, [r["nbwoq_s"] * 1e3 for r in rows], "o-", label="nbwoq", color="tab:blue")
        ax.loglog(x, [r["torch_s"] * 1e3 for r in rows], "s--", label="plain torch, reference formula",
                  color="tab:red")
        ax.loglog(x, [r["floor_s"] * 1e3 for r in rows], ":", label="memory floor (w *= 1)", color="gray")
        ax.set_title(f"{function}\n{dtype}", fontsize=9)
        ax.set_xlabel("weight size (million elements)", fontsize=8)
        ax.set_ylabel("time (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


#: Settings of ``scripts/smollm2_perplexity.py`` shown in the clip guide, in table order.
_SMOLLM2_ROWS = [
    ("rtn-g128", "128", "none", "-"), ("clip-group-g128-unweighted", "128", "per group", "plain (reference)"),
    ("clip-group-g128", "128", "per group", "magnitude"), ("clip-tensor-g128", "128", "per tensor", "magnitude"),
    ("rtn-g32", "32", "none", "-"), ("clip-group-g32-unweighted", "32", "per group", "plain (reference)"),
    ("clip-group-g32", "32", "per group", "magnitude"),
]


def smollm2_text(results):
    """Perplexities of the SmolLM2 script (``{setting: ppl}``, plus the source's)."""
    if not results:
        return ""
    rows = [[group, clip, weighting, f"{results[key]:.2f}"] for key, group, clip, weighting in _SMOLLM2_ROWS
            if key in results]
    source = next((v for k, v in results.items() if k.startswith("source")), None)
    if source is not None:
        rows.insert(0, ["-", "source weights", "-", f"{source:.2f}"])
    return _table(["group size", "clip", "weighting", "perplexity"], rows, widths=[12, 20, 22, 12])


def generate(app):
    src = app.srcdir
    path = os.path.join(src, app.config.perf_results)
    out = os.path.join(src, GENERATED)
    os.makedirs(out, exist_ok=True)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        logger.warning(f"perfpage: cannot read {app.config.perf_results}: {exc}", type="perfpage")
        data = dict(machine=None, speed=[], threads=[], first_call={}, clip_error=[], asv=[])
    parts = {
        "machine.inc": machine_text(data["machine"]) if data.get("machine") else "",
        "speed.inc": speed_text(data.get("speed", [])),
        "threads.inc": threads_text(data.get("threads", [])),
        "first_call.inc": first_call_text(data.get("first_call", {})),
        "clip_error.inc": clip_text(data.get("clip_error", [])),
        "asv.inc": asv_text(data.get("asv", [])),
        "smollm2.inc": smollm2_text(data.get("smollm2", {})),
    }
    for name, text in parts.items():
        with open(os.path.join(out, name), "w") as f:
            f.write(text or "(not measured)\n")
    if data.get("speed"):
        plot(data["speed"], os.path.join(out, "time_vs_size.png"))
    # Figures quoted in the prose of the pages, from the same file.
    app.config.rst_prolog = (app.config.rst_prolog or "") + _substitutions(data)


def _substitutions(data):
    subs = {}
    speed = data.get("speed", [])
    big = [r for r in speed if r["elements"] == max((s["elements"] for s in speed), default=0)]
    for r in big:
        if r["function"] == "quant_tensor int4 asym g128" and r["dtype"] == "float32":
            subs["int4_speedup"] = f"{r['speedup_vs_torch']:.1f}x"
            subs["int4_floor"] = f"{r['ratio_to_floor']:.1f}x"
    for fmt, s in clip_summary(data.get("clip_error", [])).items():
        key = "int4" if fmt.startswith("int4") else "nf4"
        subs[f"clip_pg_{key}"] = f"{s['per_group_vs_per_tensor']:.1f}%"
        subs[f"clip_pt_{key}"] = f"{s['per_tensor_vs_none']:.1f}%"
    repeats = sorted({r.get("repeat") for r in speed if r.get("repeat")})
    if repeats:
        subs["repeats"] = " or ".join(str(n) for n in repeats)
    first = data.get("first_call", {})
    if first:
        subs["cold_call"] = f"{first['cold']['first_call_s']:.1f} s"
        subs["warm_call"] = f"{first['warm']['first_call_s']:.2f} s"
    return "\n" + "\n".join(f".. |{k}| replace:: {v}" for k, v in subs.items()) + "\n"


def setup(app):
    app.add_config_value("perf_results", os.path.join("perf", "results.json"), "env")
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
