"""Which path an array takes, and the zero-copy views the kernels see.

NumPy arrays (and arrays that export their memory to NumPy without a copy) take the
Numba path; every other array-API array takes the reference path in its own namespace,
on its own device.
"""

import sys

import array_api_compat
import numpy as np

#: NumPy dtypes the kernels accept, with the integer view each is handed as (ml_dtypes'
#: bfloat16, as an int16 view, once ``_known`` has met it).
_KERNEL_VIEW = {
    np.dtype(np.float32): None,
    np.dtype(np.float64): None,
    np.dtype(np.float16): np.dtype(np.uint16),
}

SUPPORTED_NAMES = "float16, bfloat16, float32 or float64"

_NOT_YET = object()
_bfloat16 = _NOT_YET  # ml_dtypes' bfloat16 once looked up (None without ml_dtypes)


def bfloat16():
    """ml_dtypes' bfloat16 (as JAX, safetensors and ml_dtypes users hold it), or None
    where ml_dtypes is not installed.

    ml_dtypes is imported here, on first need, not with nbwoq: its import takes about a
    second of CPU, longer than the command takes to re-quantize a small model. An array
    can only hold its bfloat16 once something has imported ml_dtypes, so a dtype is
    checked against it only then (``_known``)."""
    global _bfloat16
    if _bfloat16 is _NOT_YET:
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes is optional
            _bfloat16 = None
        else:
            bf16 = np.dtype(ml_dtypes.bfloat16)
            _KERNEL_VIEW[bf16] = np.dtype(np.int16)
            _EXPONENT[bf16] = (np.dtype(np.uint16), np.uint16(0x7F80))
            _bfloat16 = bf16
    return _bfloat16


def is_bfloat16(dtype):
    """True when ``dtype`` is ml_dtypes' bfloat16 (never importing ml_dtypes to say no)."""
    return getattr(dtype, "name", None) == "bfloat16" and "ml_dtypes" in sys.modules and dtype == bfloat16()


def _known(dtype):
    """True when the kernels take NumPy ``dtype`` (ml_dtypes' bfloat16 is added on sight)."""
    return dtype in _KERNEL_VIEW or is_bfloat16(dtype)


def __getattr__(name):
    # ``BFLOAT16``, as this module exported it before it imported ml_dtypes lazily.
    if name == "BFLOAT16":
        return bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_numpy(x):
    return isinstance(x, np.ndarray)


def numpy_dtype_supported(dtype):
    return _known(dtype)


def compute_dtype(dtype, xp=None):
    """The float dtype a weight of ``dtype`` computes in: float64 for float64, float32 for
    every narrower float. ``xp`` None: ``dtype`` is a NumPy dtype and so is the answer;
    else both are dtypes of namespace ``xp`` (the reference path)."""
    if xp is None:
        return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    return xp.float64 if dtype == xp.float64 else xp.float32


def kernel_param(value, cdt):
    """A per-group argument as a kernel takes it, in the compute dtype ``cdt``: an array
    (rows, n_groups) C-contiguous, a Python float as a (1, 1) array, None as a (1, 1)
    placeholder the kernel does not read."""
    if value is None:
        return np.empty((1, 1), dtype=cdt)
    if isinstance(value, float):
        return np.full((1, 1), value, dtype=cdt)
    return np.ascontiguousarray(value, dtype=cdt)


def kernel_view(x):
    """The array the kernels take for NumPy array ``x``: ``x`` itself or an integer view
    of its memory (float16 -> uint16, bfloat16 -> int16). Never a copy."""
    _known(x.dtype)
    view_dtype = _KERNEL_VIEW[x.dtype]
    return x if view_dtype is None else x.view(view_dtype)


#: Unsigned view and exponent mask per storage dtype, for the finiteness scan.
_EXPONENT = {
    np.dtype(np.float32): (np.dtype(np.uint32), np.uint32(0x7F800000)),
    np.dtype(np.float64): (np.dtype(np.uint64), np.uint64(0x7FF0000000000000)),
    np.dtype(np.float16): (np.dtype(np.uint16), np.uint16(0x7C00)),
}


def exponent_view(x):
    """``(bits, mask)``: ``x`` viewed as unsigned integers of its width, and the mask of
    its exponent field (all ones means NaN or Inf). Never a copy."""
    _known(x.dtype)
    view_dtype, mask = _EXPONENT[x.dtype]
    return x.view(view_dtype), mask


def namespace(x):
    """Array-API namespace of ``x`` (array_api_compat wraps NumPy, torch, CuPy, ...)."""
    return array_api_compat.array_namespace(x)


#: Veltkamp's splitter for float64 (2**27 + 1): ``hi`` keeps the top 26 bits of a value.
_SPLIT = 134217729.0


def _square_minus(c, v, xp):
    """``c * c - v`` for float64 ``c``, ``v`` with ``c * c`` near ``v``, from the exact
    square (Dekker's product: ``c * c = p + e`` exactly), so its sign and size are those
    of the exact value up to one final rounding."""
    t = c * _SPLIT
    hi = t - (t - c)
    lo = c - hi
    p = c * c
    e = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
    return (p - v) + e


def sqrt(v, xp):
    """The correctly rounded square root of float64 ``v`` (NumPy's, IEEE ``sqrt``), on
    any array library. Some return a neighbour of it: torch on CPU (SLEEF, 0.5001 ulp)
    does for about 0.8% of values, which moved the twins of the magnitude-weighted
    kernels off their bits. The library's root ``r`` is kept or replaced by the float64
    neighbour (below or above) whose exact square lies nearest ``v``."""
    if is_numpy(v) or array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(xp):
        return xp.sqrt(v)
    # below 2**-900 the exact square would underflow: scale by an even power of two first
    # (exact both ways: the root of a subnormal is a normal number)
    tiny = v < 2.0 ** -900
    v = xp.where(tiny, v * 2.0 ** 1000, v)
    r = xp.sqrt(v)
    ok = xp.isfinite(r) & (r > 0)
    safe = xp.where(ok, r, xp.ones_like(r))
    best = safe
    best_err = xp.abs(_square_minus(safe, xp.where(ok, v, xp.ones_like(v)), xp))
    for toward in (xp.zeros_like(safe), xp.full_like(safe, float("inf"))):
        c = xp.nextafter(safe, toward)
        err = xp.abs(_square_minus(c, xp.where(ok, v, xp.ones_like(v)), xp))
        closer = err < best_err
        best = xp.where(closer, c, best)
        best_err = xp.where(closer, err, best_err)
    return xp.where(tiny, xp.where(ok, best, r) * 2.0 ** -500, xp.where(ok, best, r))
