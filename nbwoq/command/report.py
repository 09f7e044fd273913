"""The report of one run: a row per tensor, the summary, and the table the command prints."""

import resource
import sys

import numpy as np

from nbwoq._version import __version__


def peak_rss_bytes():
    """Peak resident memory of this process so far.

    Linux: ``VmHWM`` of ``/proc/self/status``, the peak of this program's own memory.
    (``getrusage``'s ``ru_maxrss`` survives ``exec``: a command started from a big
    process, such as a Python with a model loaded, would report its parent's size.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class FirstOfKind:
    """Marks the first tensor of each kind (quantized or copied, per source dtype): its time
    includes compiling the kernels, or loading them from Numba's cache."""

    def __init__(self):
        self._seen = set()

    def __call__(self, encoded, dtype):
        key = (encoded is not None and encoded.quantized, dtype)
        first = key not in self._seen
        self._seen.add(key)
        return first


def tensor_row(info, shard, label, encoded, bytes_out, seconds, includes_jit=False):
    """The report row of tensor ``info``; ``encoded`` is its ``writer.Encoded`` (None for
    a tensor copied file to file). ``includes_jit``: its time includes kernel compilation."""
    quantized = encoded is not None and encoded.quantized
    rel_mse = weighted = None
    baseline = {"rtn_weighted_error": None}
    if quantized:
        rel_mse = encoded.err / encoded.norm if encoded.norm > 0 else 0.0
        if encoded.weighted is not None:
            # (baseline's error, the method's, norm[, baseline's name]): RTN for the integer
            # settings, llama.cpp's reference encoder for GGUF --method search
            base_err, method_err, norm, *name = encoded.weighted
            key = f"{name[0] if name else 'rtn'}_weighted_error"
            baseline[key], weighted = (base_err / norm, method_err / norm) if norm > 0 else (0.0, 0.0)
    return dict(name=info.name, shape=list(info.shape), dtype=info.dtype,
                format=label if quantized else f"copy {info.dtype}",
                clip=encoded.clip if quantized else None, rel_mse=rel_mse,
                weighted_error=weighted, **baseline,
                seconds=seconds, includes_jit=includes_jit, bytes_in=info.nbytes, bytes_out=bytes_out,
                shard=shard)


def summarize(rows, wall, fmt, options, source, out, resumed, label):
    """The report dict: ``summary`` and ``tensors`` (worst relative error first)."""
    quantized = [r for r in rows if r["rel_mse"] is not None]
    bytes_in = sum(r["bytes_in"] for r in rows)
    params_q = sum(int(np.prod(r["shape"])) for r in quantized)
    errors = [r["rel_mse"] for r in quantized]
    compared = [r for r in quantized if r.get("weighted_error") is not None]
    # Throughput counts the work this run did: rows kept from an interrupted run took no time.
    worked = [r for r in rows if not r.get("resumed")]
    bytes_done = sum(r["bytes_in"] for r in worked)
    params_done = sum(int(np.prod(r["shape"])) for r in worked if r["rel_mse"] is not None)
    summary = dict(
        source=source.path, output=out, format=fmt, settings=options.as_dict(), label=label,
        tensors=len(rows), quantized=len(quantized), copied=len(rows) - len(quantized),
        quantized_params=params_q, bytes_in=bytes_in, bytes_out=sum(r["bytes_out"] for r in rows),
        seconds=wall, throughput_bytes_per_s=bytes_done / wall if wall > 0 else None,
        quantized_params_per_s=params_done / wall if wall > 0 else None,
        mean_rel_mse=float(np.mean(errors)) if errors else None,
        max_rel_mse=float(np.max(errors)) if errors else None,
        mean_weighted_error=float(np.mean([r["weighted_error"] for r in compared])) if compared else None,
        mean_rtn_weighted_error=_mean(compared, "rtn_weighted_error"),
        mean_reference_weighted_error=_mean(compared, "reference_weighted_error"),
        peak_rss_bytes=peak_rss_bytes(), resumed_shards=resumed,
        nbwoq=__version__,
    )
    return dict(summary=summary, tensors=sorted(rows, key=lambda r: -(r["rel_mse"] or -1.0)))


def _mean(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def format_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _clip_text(clip):
    if clip is None:
        return "-"
    if isinstance(clip, dict):
        return f"{clip['min']:.3f}/{clip['mean']:.3f}/{clip['max']:.3f}"
    return f"{clip:.3f}"


def _shown(name):
    """A tensor name as the terminal may show it: control characters escaped."""
    return name if name.isprintable() else repr(name)[1:-1]


def format_table(report, top=15, rows=True):
    """The per-tensor table (worst error first, ``top`` rows, 0 for all) and the summary, as text."""
    rows = [r for r in report["tensors"] if r["rel_mse"] is not None] if rows else []
    shown = rows if top == 0 else rows[:top]
    lines = []
    if shown:
        width = max(len(_shown(r["name"])) for r in shown)
        lines.append(f"{'tensor':<{width}}  {'shape':>13}  {'format':<18}  {'clip min/mean/max':>17}  {'rel MSE':>9}  {'ms':>7}")
        for r in shown:
            shape = "x".join(str(d) for d in r["shape"])
            mark = "*" if r.get("includes_jit") else " "
            lines.append(f"{_shown(r['name']):<{width}}  {shape:>13}  {r['format']:<18}  {_clip_text(r['clip']):>17}  "
                         f"{r['rel_mse']:9.3e}  {r['seconds'] * 1e3:7.1f}{mark}")
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more quantized tensors (all of them in --report)")
        if any(r.get("includes_jit") for r in shown):
            lines.append("* the first tensor of its kind: its time includes compiling the kernels (or loading "
                         "them from the cache)")
    s = report["summary"]
    lines.append("")
    lines.append(f"{s['quantized']} tensors quantized ({s['label']}, format {s['format']}), {s['copied']} copied; "
                 f"{format_bytes(s['bytes_in'])} -> {format_bytes(s['bytes_out'])}")
    if s["mean_rel_mse"] is not None:
        lines.append(f"relative MSE: mean {s['mean_rel_mse']:.3e}, worst {s['max_rel_mse']:.3e}")
    if s.get("mean_weighted_error") is not None and s.get("mean_rtn_weighted_error") is not None:
        lines.append(f"weighted error (rms+|x|), mean: {s['mean_weighted_error']:.3e} with method "
                     f"{s['settings']['method']}, {s['mean_rtn_weighted_error']:.3e} with rtn")
    if s.get("mean_weighted_error") is not None and s.get("mean_reference_weighted_error") is not None:
        lines.append(f"weighted error (the reference encoder's weights), mean: {s['mean_weighted_error']:.3e} "
                     f"with method {s['settings']['method']}, {s['mean_reference_weighted_error']:.3e} with "
                     "llama.cpp's reference")
    lines.append(f"{s['seconds']:.2f} s, {format_bytes(s['throughput_bytes_per_s'])}/s, "
                 f"{s['quantized_params_per_s'] / 1e6:.1f} M quantized params/s, peak RSS {format_bytes(s['peak_rss_bytes'])}")
    if s["resumed_shards"]:
        lines.append(f"resumed: {s['resumed_shards']} finished shard(s) kept")
    lines.append(f"output: {_shown(s['output'])}")
    return "\n".join(lines)
