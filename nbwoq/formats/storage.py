"""Stored tensor types: one table from a file's dtype name to how its bytes are held.

Every file format names its element types (safetensors ``"BF16"``, GGUF ``F16``); this
table says, for each name, the NumPy dtype its bytes are read as, the view the decoding
kernels take, the exponent mask of the NaN/Inf scan, and whether it can be quantized.
bfloat16 is always held as its 16-bit pattern (no ml_dtypes or torch needed) and widened
exactly by the kernels.

The core's ``_arrays`` holds the matching rules for arrays handed to the API in memory
(keyed by NumPy dtype, ml_dtypes' bfloat16 included); ``from_numpy`` maps those back to
names, so a dtype has one name whichever way it comes in.
"""

from typing import NamedTuple

import numpy as np

from nbwoq import _arrays
from nbwoq.formats.packing import decode_rows


class Storage(NamedTuple):
    """How one stored dtype is held: ``numpy`` (bytes as read), ``kernel`` (the view the
    decoding kernels take, None: not a float the kernels decode), ``exponent`` (mask of
    the exponent field in the unsigned view, for the NaN/Inf scan)."""

    name: str
    numpy: np.dtype
    kernel: "np.dtype | None"
    exponent: "int | None"

    @property
    def quantizable(self):
        return self.kernel is not None


def _s(name, numpy, kernel=None, exponent=None):
    return Storage(name, np.dtype(numpy), None if kernel is None else np.dtype(kernel), exponent)


TABLE = (
    _s("F64", "<f8"),
    _s("F32", "<f4", "<f4", 0x7F800000),
    _s("F16", "<f2", "<u2", 0x7C00),
    _s("BF16", "<u2", "<i2", 0x7F80),  # float32's 8-bit exponent field in 16 bits
    _s("I64", "<i8"),
    _s("I32", "<i4"),
    _s("I16", "<i2"),
    _s("I8", "i1"),
    _s("U64", "<u8"),
    _s("U32", "<u4"),
    _s("U16", "<u2"),
    _s("U8", "u1"),
    _s("BOOL", "?"),
    _s("F8_E4M3", "u1"),
    _s("F8_E5M2", "u1"),
)
BY_NAME = {s.name: s for s in TABLE}
#: Safetensors dtype name -> NumPy dtype its bytes are read as.
DTYPES = {s.name: s.numpy for s in TABLE}


def quantizable(name):
    """True for float storage the kernels decode, and for every GGUF block type (a GGUF
    source hands those over decoded to float32)."""
    storage = BY_NAME.get(name)
    return storage is None or storage.quantizable


def from_numpy(dtype):
    """The stored name of an in-memory NumPy dtype (ml_dtypes' bfloat16 is ``"BF16"``)."""
    dtype = np.dtype(dtype)
    if _arrays.is_bfloat16(dtype):
        return "BF16"
    for storage in TABLE:
        if storage.numpy == dtype and storage.name not in ("BF16", "F8_E4M3", "F8_E5M2"):
            return storage.name
    raise TypeError(f"no stored dtype for NumPy dtype {dtype}")


def stored_bytes(array):
    """``array`` as it is stored: bfloat16 (ml_dtypes) as its uint16 pattern, others as is."""
    if _arrays.is_bfloat16(array.dtype):
        return array.view(np.uint16)
    return array


def kernel_view(array, name):
    """The view the decoding kernels take of stored values: float32 as is, float16 as
    uint16, bfloat16 as int16. ``TypeError`` for anything else."""
    storage = BY_NAME.get(name)
    if storage is None or storage.kernel is None:
        raise TypeError(f"cannot decode dtype {name}")
    return array if storage.kernel == storage.numpy else array.view(storage.kernel)


def exponent_view(array, name):
    """``(unsigned view, exponent mask)`` of stored float values, for the NaN/Inf scan."""
    storage = BY_NAME[name]
    unsigned = np.dtype(f"<u{storage.numpy.itemsize}")
    return array.view(unsigned), unsigned.type(storage.exponent)


def as_float(array, name):
    """Stored float values as an array the core takes without a copy: float32 and float16
    as they are, bfloat16's bit pattern viewed as ml_dtypes' bfloat16 (widened to a
    float32 copy only where ml_dtypes is missing)."""
    if name == "F32" or name == "F16":
        return array if name == "F32" else array.view(np.float16)
    if name == "BF16":
        bf16 = _arrays.bfloat16()
        return array.view(bf16) if bf16 is not None else widen(array, name)
    raise TypeError(f"cannot decode dtype {name}")


def widen(array, name, out=None):
    """A writable float32 copy of stored values (decoded in a parallel kernel; exact)."""
    if out is None:
        out = np.empty(array.shape, dtype=np.float32)
    if name == "F32":
        np.copyto(out, array)
    else:
        view = kernel_view(array, name)
        decode_rows(view.reshape(1, -1) if view.ndim == 1 else view, out.reshape(1, -1) if out.ndim == 1 else out)
    return out
