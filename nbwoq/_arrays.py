"""Which path an array takes, and the zero-copy views the kernels see.

NumPy arrays (and arrays that export their memory to NumPy without a copy) take the
Numba path; every other array-API array takes the reference path in its own namespace,
on its own device.
"""

import array_api_compat
import numpy as np

try:  # bfloat16 as JAX, safetensors and ml_dtypes users hold it
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is optional
    ml_dtypes = None
    BFLOAT16 = None

#: NumPy dtypes the kernels accept, with the integer view each is handed as.
_KERNEL_VIEW = {
    np.dtype(np.float32): None,
    np.dtype(np.float64): None,
    np.dtype(np.float16): np.dtype(np.uint16),
}
if BFLOAT16 is not None:
    _KERNEL_VIEW[BFLOAT16] = np.dtype(np.int16)

SUPPORTED_NAMES = "float16, bfloat16, float32 or float64"


def is_numpy(x):
    return isinstance(x, np.ndarray)


def numpy_dtype_supported(dtype):
    return dtype in _KERNEL_VIEW


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
    view_dtype = _KERNEL_VIEW[x.dtype]
    return x if view_dtype is None else x.view(view_dtype)


#: Unsigned view and exponent mask per storage dtype, for the finiteness scan.
_EXPONENT = {
    np.dtype(np.float32): (np.dtype(np.uint32), np.uint32(0x7F800000)),
    np.dtype(np.float64): (np.dtype(np.uint64), np.uint64(0x7FF0000000000000)),
    np.dtype(np.float16): (np.dtype(np.uint16), np.uint16(0x7C00)),
}
if BFLOAT16 is not None:
    _EXPONENT[BFLOAT16] = (np.dtype(np.uint16), np.uint16(0x7F80))


def exponent_view(x):
    """``(bits, mask)``: ``x`` viewed as unsigned integers of its width, and the mask of
    its exponent field (all ones means NaN or Inf). Never a copy."""
    view_dtype, mask = _EXPONENT[x.dtype]
    return x.view(view_dtype), mask


def namespace(x):
    """Array-API namespace of ``x`` (array_api_compat wraps NumPy, torch, CuPy, ...)."""
    return array_api_compat.array_namespace(x)
