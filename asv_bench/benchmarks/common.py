"""Shared benchmark data and helpers.

Weights are seeded and cached per (shape, dtype) so every benchmark in a run sees the
same data; ``fresh`` hands each timed call its own copy (the functions work in place).
Ratios against the plain-torch reference and the memory floor are measured inside one
process, right next to each other, so machine load cancels out.
"""

import functools
import json
import subprocess
import sys
import textwrap
import time

import numpy as np

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BFLOAT16 = None

SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096)}
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BFLOAT16}


@functools.lru_cache(maxsize=8)
def _weight(shape, dtype_name):
    rng = np.random.default_rng(20261127)
    w = rng.standard_normal(shape, dtype=np.float32)
    # 0.1% outliers, as real LLM weights have.
    n = max(1, w.size // 1000)
    w.flat[rng.integers(0, w.size, n)] *= 20
    w.setflags(write=False)
    return w.astype(DTYPES[dtype_name])


def weight(shape_name, dtype_name="float32"):
    """Read-only seeded weight (copy it before an in-place call)."""
    w = _weight(SHAPES[shape_name], dtype_name)
    w.setflags(write=False)
    return w


def fresh(shape_name, dtype_name="float32"):
    return weight(shape_name, dtype_name).copy()


def median_time(func, setup, repeat=5):
    """Median wall time of ``func(setup())`` over ``repeat`` calls (setup not timed)."""
    times = []
    for _ in range(repeat):
        arg = setup()
        t0 = time.perf_counter()
        func(arg)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def floor_pass(w):
    """The memory-bandwidth floor: one in-place read-and-write pass over the weight.

    bfloat16 goes through its 16-bit pattern: NumPy multiplies ``ml_dtypes.bfloat16``
    element by element through float conversions, far below memory speed.
    """
    if BFLOAT16 is not None and w.dtype == BFLOAT16:
        bits = w.view(np.uint16)
        bits *= 1
    else:
        w *= 1.0


def torch_or_none():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch


def torch_int_codes(x, bits, scheme):
    """The reference's integer formula in plain torch, each row of ``x`` one group, in
    place: ``x`` ends holding the codes. Returns ``(scale, zp)`` ((rows, 1); zp None for
    sym). The benchmarks' torch baselines all start from this one copy."""
    torch = torch_or_none()
    if scheme == "asym":
        maxq = 2**bits - 1
        zeros = torch.zeros(x.shape[0], dtype=x.dtype)
        wmin = torch.minimum(x.min(1)[0], zeros)
        wmax = torch.maximum(x.max(1)[0], zeros)
        both = (wmin == 0) & (wmax == 0)
        wmin[both] = -1
        wmax[both] = 1
        scale = ((wmax - wmin) / maxq).unsqueeze(1)
        zp = torch.round(-wmin.unsqueeze(1) / scale)
        x.div_(scale).round_().add_(zp).clamp_(0, maxq)
        return scale, zp
    maxq, minq = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    wmax = torch.maximum(x.max(1)[0].abs(), x.min(1)[0].abs())
    wmax[wmax == 0] = 1
    scale = (wmax / maxq).unsqueeze(1)
    x.div_(scale).round_().clamp_(minq, maxq)
    return scale, None


def warm_up():
    """Compile (or load from cache) every kernel once, outside the timed region."""
    import nbwoq

    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    for scheme in ("sym", "asym"):
        nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, scheme=scheme)
        nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, scheme=scheme, return_int=True)
        nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, scheme=scheme, check_finite=False)
    if BFLOAT16 is not None:
        nbwoq.quant_tensor(w.astype(BFLOAT16), bits=4, group_size=32)


def warm_up_clip():
    """Compile (or load from cache) the clip-search kernel for the benchmark weights:
    read-only arrays, integer and codebook formats, per tensor and per group."""
    import nbwoq

    w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    w.setflags(write=False)  # the benchmark weights are read-only: their own specialization
    for dtype, group_size in (("int", 128), ("nf4", 64)):
        for per_group in (False, True):
            nbwoq.search_clip(w, bits=4, group_size=group_size, dtype=dtype, per_group=per_group)


# Peak resident memory added by one call, measured in a fresh process. Linux resets the
# peak (VmHWM) to the current size when 5 is written to /proc/self/clear_refs, so the
# peak is read for the call alone, after its inputs exist and the kernels are loaded.
# Without clear_refs the lifetime peak is used: an upper bound.
PEAK_PRELUDE = textwrap.dedent('''
    import json, resource, sys

    def _status_kib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    def reset_peak():
        """Start a peak measurement; returns the resident size now, in KiB."""
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kib("VmRSS")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_kib():
        try:
            return _status_kib("VmHWM")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def report(before_kib, weight_bytes):
        print(json.dumps({"extra_kib": peak_kib() - before_kib, "weight_kib": weight_bytes / 1024}))

    ARGS = json.loads(sys.argv[1])
''')


def extra_peak_percent_of(body, args):
    """Run ``body`` (which calls ``report``) after ``PEAK_PRELUDE`` in a fresh process with
    ``ARGS = args``; the peak resident memory it added, in % of the weight."""
    out = subprocess.run([sys.executable, "-c", PEAK_PRELUDE + textwrap.dedent(body), json.dumps(args)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return 100.0 * r["extra_kib"] / r["weight_kib"]
