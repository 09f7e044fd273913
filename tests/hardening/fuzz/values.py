"""Weight values and layouts the fuzz cases are made of, and the NumPy/torch plumbing
every checker shares (snapshots, NumPy copies of tensors).

Values come from a NumPy generator seeded by Hypothesis, so a failure prints the seed
and replays exactly.
"""

import tempfile

import numpy as np

from nbwoq._tables import FLOAT_MAPPING

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

try:
    import array_api_strict
except ImportError:  # pragma: no cover
    array_api_strict = None


ABSENT = "<absent>"  # an argument left to its default

VALID_DTYPES = ("float16", "bfloat16", "float32", "float64")
INVALID_DTYPES = ("int8", "int32", "int64", "uint16", "bool", "complex64", "longdouble", ">f4")
CODEBOOKS = tuple(FLOAT_MAPPING)


# Magnitudes a row is drawn at: ordinary, tiny but normal, subnormal in float32, huge,
# and the largest finite float16 / float32 values.
MAGNITUDES = (1.0, 1.0, 1.0, 1e-3, 1e-30, 1e-41, 1e-44, 1e30, 6e4, 3e38)
SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 0.0)


def np_dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def make_values(seed, shape, profile):
    """float64 values of ``shape``: rows at random magnitudes, zero rows, specials."""
    rng = np.random.default_rng(seed)
    v = np.asarray(rng.standard_normal(shape))
    if v.ndim == 2 and v.size:
        scale = rng.choice(MAGNITUDES, size=(shape[0], 1)) if profile != "plain" else 1.0
        v = v * scale
        if profile in ("zeros", "mixed"):
            v[rng.random(shape[0]) < 0.3] = 0.0
        if profile in ("positive", "mixed"):
            v = np.abs(v)
        if profile in ("specials", "mixed"):
            mask = rng.random(shape) < 0.05
            v[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
        if profile == "ties":  # values on the grid of a small step: rounding ties
            v = np.round(v * 4) / 4
    return v


def cast(values, dtype):
    """``values`` (float64) in ``dtype``; out-of-range values become what NumPy makes them."""
    with np.errstate(all="ignore"):
        if dtype.kind in "iub":
            return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).clip(-100, 100).astype(dtype)
        return values.astype(dtype)


def arrange(a, layout):
    """``a`` (a NumPy array) in the memory layout ``layout``; same values."""
    if a.ndim != 2 or layout == "C":
        return np.ascontiguousarray(a)
    rows, cols = a.shape
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "cols-strided":
        buf = np.zeros((rows, 2 * cols), dtype=a.dtype)
        buf[:, ::2] = a
        return buf[:, ::2]
    if layout == "rows-strided":
        buf = np.zeros((2 * rows, cols), dtype=a.dtype)
        buf[::2] = a
        return buf[::2]
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    if layout == "readonly":
        out = np.array(a)
        out.setflags(write=False)
        return out
    if layout == "unaligned":
        if a.dtype.itemsize == 1:
            return np.array(a)
        buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
        out = buf[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    if layout == "memmap-readonly":
        f = tempfile.NamedTemporaryFile(suffix=".bin", delete=False)
        f.write(np.ascontiguousarray(a).tobytes())
        f.close()
        if a.size == 0:
            return np.array(a)  # an empty file cannot be mapped
        return np.memmap(f.name, dtype=a.dtype, mode="r", shape=a.shape)
    raise AssertionError(layout)


PROFILES = ("plain", "plain", "plain", "magnitudes", "magnitudes", "zeros", "positive", "specials", "mixed", "ties")
LAYOUTS = ("C", "C", "C", "C", "F", "cols-strided", "rows-strided", "reversed", "readonly", "unaligned")


def snapshot(x):
    """The bytes and strides of an array-like argument (None for anything else)."""
    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape, np.array(x).tobytes())
    if _is_torch(x):
        t = _dense(x)
        if t is None:
            return ("meta", tuple(x.shape))
        t = t.cpu().contiguous()
        if t.dtype == _torch().bfloat16:
            t = t.view(_torch().int16)
        elif t.dtype in (_torch().float8_e4m3fn,):
            t = t.view(_torch().uint8)
        return (str(x.dtype), tuple(x.shape), x.stride() if x.layout == _torch().strided else None,
                t.numpy().tobytes())
    return None


def _torch():
    import torch

    return torch


def _is_torch(x):
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _np(x):
    if x is None:
        return None
    if _is_torch(x):
        t = x.detach().cpu()
        if t.dtype == _torch().bfloat16:
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _values_of(w, info):
    """The weight's values as float64 (None when its dtype is not a float one)."""
    if info["dtype"] not in VALID_DTYPES:
        return None
    return _np(w).astype(np.float64) if not _is_torch(w) else _torch_values(w)


def _torch_values(t):
    t = _dense(t)
    if t is None:
        return None
    return t.to("cpu", copy=True).double().numpy()


def _dense(t):
    """``t`` detached, as a dense tensor (None on the meta device: no values)."""
    t = t.detach()
    if t.device.type == "meta":
        return None
    return t.to_dense() if t.layout != _torch().strided else t
