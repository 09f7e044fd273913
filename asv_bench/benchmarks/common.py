"""Shared benchmark helpers: the one home of what the asv suite, ``docs/perf/measure.py``
and ``asv_bench/clip_error_report.py`` measure with.

* Data: weights seeded and cached per (shape, dtype) so every benchmark in a run sees
  the same data; ``fresh`` and ``torch_copy`` hand each timed call its own copy (the
  functions work in place).
* Timing: ``median_time``, and ``interleaved_medians`` for calls that take turns so
  machine load falls on all of them alike; ``floor_pass``, the memory floor.
* Warm-up: ``warm_up``, ``warm_up_clip``, ``warm_up_codebook`` compile (or load) the
  kernels outside the timed region.
* The plain-torch baselines: the reference library's formulas in torch
  (``torch_int_codes`` and the functions built on it, the codebook loop, the given-scale
  loop, double quantization, the 40-pass clip search). ``tests/implementations.py`` lists
  them beside nbwoq's kernels, reference twins and naive oracles, and the tests check them.
* Peak memory: ``extra_peak_percent_of`` runs a body in a fresh process.

Ratios against the plain-torch reference and the memory floor are measured inside one
process, right next to each other, so machine load cancels out.
"""

import functools
import json
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np

import nbwoq

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BFLOAT16 = None

# tests/implementations.py, the registry of the implementations of each operation that the
# benchmarks time (appended: nothing of the suite's own is shadowed).
TESTS = pathlib.Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))

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


def weight(shape, dtype_name="float32"):
    """Read-only seeded weight (copy it before an in-place call); ``shape`` is a name of
    ``SHAPES`` or a ``(rows, cols)`` pair."""
    w = _weight(tuple(SHAPES[shape] if isinstance(shape, str) else shape), dtype_name)
    w.setflags(write=False)
    return w


def fresh(shape, dtype_name="float32"):
    return weight(shape, dtype_name).copy()


def torch_from_numpy(a):
    """A torch copy of a NumPy array (bfloat16 through its 16-bit pattern: the same
    values, no conversion)."""
    torch = torch_or_none()
    if BFLOAT16 is not None and a.dtype == BFLOAT16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def torch_copy(shape, dtype_name="float32"):
    """A fresh torch copy of the seeded weight."""
    return torch_from_numpy(weight(shape, dtype_name))


def interleaved_medians(calls, setups, repeat=15):
    """Median wall time of each ``calls[k](setups[k]())``, the calls taking turns (in
    forward, then reverse order: no call always runs right after the same one) so that
    machine load falls on all of them alike (setups not timed)."""
    times = [[] for _ in calls]
    for i in range(repeat):
        order = range(len(calls)) if i % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            call, setup = calls[k], setups[k]
            arg = setup()
            t0 = time.perf_counter()
            call(arg)
            times[k].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


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

    16-bit NumPy floats (bfloat16, float16) go through their 16-bit pattern: NumPy
    multiplies ``ml_dtypes.bfloat16`` element by element through float conversions, far
    below memory speed, which would flatter nbwoq. Torch tensors multiply natively.
    """
    if isinstance(w, np.ndarray) and w.dtype.itemsize == 2:
        bits = w.view(np.uint16)
        bits *= np.uint16(1)
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


def torch_quant_tensor(w, bits, group_size, scheme):
    """The reference's integer fake quantization in plain torch (in place, like the reference)."""
    rows, cols = w.shape
    x = w.reshape(-1, cols if group_size == -1 else group_size)
    scale, zp = torch_int_codes(x, bits, scheme)
    if zp is not None:
        x.sub_(zp)
    x.mul_(scale)
    return w


def _torch_codebook_groups(x, scale, dtype, return_int):
    """The reference's codebook loop on ``x`` (groups in rows) with ``scale`` (rows, 1)."""
    torch = torch_or_none()
    levels = nbwoq.FLOAT_MAPPING[dtype]
    values = nbwoq.INT_MAPPING[dtype] if return_int else levels
    mids = [(levels[i] + levels[i + 1]) / 2 for i in range(len(levels) - 1)]
    x.div_(scale)
    q = torch.zeros_like(x)
    last = len(levels) - 1
    for i, v in enumerate(values):
        if i == 0:
            q += torch.where(x <= mids[0], v, 0)
        elif i == last:
            q += torch.where(x > mids[-1], v, 0)
        else:
            q += torch.where((mids[i - 1] < x) & (x <= mids[i]), v, 0)
    x.copy_(q)
    if not return_int:
        x.mul_(scale)
    return x


def torch_quantize_codebook(w, dtype, group_size, return_int):
    """quant_tensor with a codebook, the reference's formula in plain torch (in place)."""
    x = w.reshape(-1, group_size)
    scale = (x.abs().max(1)[0] * 1.0 / max(nbwoq.FLOAT_MAPPING[dtype])).unsqueeze(1)
    _torch_codebook_groups(x, scale, dtype, return_int)
    return w


def torch_w_scale(w, scale, zp, group_size, dtype):
    """quant_weight_w_scale as the reference runs it: a Python loop over the groups."""
    torch = torch_or_none()
    out = torch.zeros(w.shape, dtype=w.dtype)
    for i in range(w.shape[1] // group_size):
        cols = slice(i * group_size, (i + 1) * group_size)
        if dtype in nbwoq.FLOAT_MAPPING:
            out[:, cols] = _torch_codebook_groups(w[:, cols], scale[:, i: i + 1], dtype, return_int=True)
        else:
            part = w[:, cols].div_(scale[:, i: i + 1])
            if zp is not None:
                part.add_(zp[:, i: i + 1])
            out[:, cols].copy_(part.round_())
    return out


def torch_w_scale_vectorized(w, scale, zp, group_size):
    """The integer quant_weight_w_scale formula as one reshaped torch expression."""
    x = w.reshape(-1, group_size)
    x.div_(scale.reshape(-1, 1))
    if zp is not None:
        x.add_(zp.reshape(-1, 1))
    x.round_()
    return w


def _torch_int_fake(x, bits, scheme):
    """Integer quantization of the rows of ``x`` in place: asym leaves the codes (the
    caller dequantizes with its own scales), sym stores ``code * scale``."""
    scale, zp = torch_int_codes(x, bits, scheme)
    if zp is None:
        x.mul_(scale)
    return scale, zp


def torch_double_quant(w, group_size):
    """quant_tensor(double_quant=True) with its defaults, the mean added back."""
    x = w.reshape(-1, group_size)
    scale, zp = _torch_int_fake(x, 4, "asym")
    flat = scale.reshape(1, -1)
    mean = flat.mean()
    flat.sub_(mean)
    n = flat.shape[1] // 256 * 256
    _torch_int_fake(flat[:, :n].reshape(-1, 256), 8, "sym")
    if n < flat.shape[1]:
        _torch_int_fake(flat[:, n:], 8, "sym")
    flat.add_(mean)
    x.sub_(zp).mul_(scale)
    return w


# The clip search as the reference runs it: one fake quantization per candidate ratio.
RATIOS = [1 - i / 200 for i in range(40)]


def _torch_fake_quant(x, ratio, bits, dtype, torch):
    """``x`` (groups, size), a fresh copy, fake-quantized in place with clip ``ratio``."""
    if dtype == "int":
        maxq = 2**bits - 1
        zeros = torch.zeros(x.shape[0], dtype=x.dtype)
        wmin = torch.minimum(x.min(1)[0], zeros) * ratio
        wmax = torch.maximum(x.max(1)[0], zeros) * ratio
        both = (wmin == 0) & (wmax == 0)
        wmin[both] = -1
        wmax[both] = 1
        scale = ((wmax - wmin) / maxq).unsqueeze(1)
        zp = torch.round(-wmin.unsqueeze(1) / scale)
        return x.div_(scale).round_().add_(zp).clamp_(0, maxq).sub_(zp).mul_(scale)
    levels = torch.tensor(nbwoq.FLOAT_MAPPING[dtype], dtype=x.dtype)
    mids = (levels[1:] + levels[:-1]) / 2
    scale = x.abs().amax(1, keepdim=True) * ratio / levels.max()
    # bucketize(right=False): index i with mids[i-1] < v <= mids[i], the midpoint rule.
    return levels[torch.bucketize(x.div_(scale), mids)].mul_(scale)


def torch_search_clip(w, bits, group_size, scheme, dtype, per_group=False, weighting=None):
    """The 40-pass search in plain torch (float32 ``w``, dividing group size, asym/nf4);
    ``weighting="magnitude"`` weights each squared error by the group's RMS plus ``|x|``."""
    torch = torch_or_none()
    assert scheme == "asym" or dtype != "int"
    g = w.reshape(-1, group_size)
    weight = None
    if weighting == "magnitude":
        weight = g.double().pow(2).mean(1, keepdim=True).sqrt().float() + g.abs()
    best_loss, best_ratio = float("inf"), None
    group_best = torch.full((g.shape[0],), float("inf"), dtype=torch.float64)
    group_ratio = torch.ones(g.shape[0], dtype=w.dtype)
    for ratio in RATIOS:
        q = _torch_fake_quant(g.clone(), ratio, bits, dtype, torch)
        err = (g - q).pow_(2)
        if weight is not None:
            err.mul_(weight)
        if per_group:
            loss = err.sum(1, dtype=torch.float64)
            better = loss < group_best
            group_best = torch.where(better, loss, group_best)
            group_ratio[better] = ratio
        else:
            loss = err.mean().item()
            if loss < best_loss:
                best_loss, best_ratio = loss, ratio
    return group_ratio.reshape(w.shape[0], -1) if per_group else best_ratio


def warm_up():
    """Compile (or load from cache) every kernel once, outside the timed region."""
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
    w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    w.setflags(write=False)  # the benchmark weights are read-only: their own specialization
    for dtype, group_size in (("int", 128), ("nf4", 64)):
        for per_group in (False, True):
            nbwoq.search_clip(w, bits=4, group_size=group_size, dtype=dtype, per_group=per_group)


def warm_up_codebook():
    """Compile (or load from cache) every codebook, given-scale and double-quant kernel."""
    warm_up()
    for dtype in ("float32", "bfloat16"):
        w = np.random.default_rng(0).standard_normal((8, 256)).astype(DTYPES[dtype])
        for name in ("nf4", "fp4"):
            for return_int in (False, True):
                nbwoq.quant_tensor(w.copy(), group_size=64, dtype=name, return_int=return_int)
        _, s, z = nbwoq.quant_tensor(w.copy(), group_size=128, return_int=True)
        nbwoq.quant_weight_w_scale(w.copy(), s, z, group_size=128)
        _, s, _ = nbwoq.quant_tensor(w.copy(), group_size=128, dtype="nf4", return_int=True)
        nbwoq.quant_weight_w_scale(w.copy(), s, group_size=128, dtype="nf4")
        for return_int in (False, True):
            nbwoq.quant_tensor(w.copy(), group_size=128, double_quant=True, return_int=return_int)


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
