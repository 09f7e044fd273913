"""Argument checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
impossible value) naming the argument and what was expected. Public functions run all
of them before their first write, so a failed call leaves the caller's data untouched.
"""

import numbers
import operator

import numpy as np

from nbwoq import _arrays, _kernels_finite, _reference_int
from nbwoq._tables import DTYPES, SCHEMES

MAX_BITS = 16
# Floating dtypes of other array libraries the reference path computes with (by name:
# torch says "torch.bfloat16", JAX "bfloat16").
_ARRAY_API_FLOATS = ("float16", "bfloat16", "float32", "float64")


def integer(value, name):
    """``value`` as a Python int; bools and floats are refused."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def bits(value, name="bits"):
    value = integer(value, name)
    if value > MAX_BITS:
        raise ValueError(f"{name} must be at most {MAX_BITS}, got {value!r}")
    return value


def positive_bits(value, name="bits"):
    """``bits`` for the functions where ``bits <= 0`` means nothing (1 to ``MAX_BITS``)."""
    value = bits(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def full_range_bits(bits, sym, full_range, name="full_range"):
    """Refuse 1-bit symmetric full range (its scale is not finite)."""
    if sym and full_range and bits == 1:
        raise ValueError(f"{name} needs bits >= 2 for scheme='sym' (1-bit full range has no finite scale)")


def group_size(value, name="group_size"):
    value = integer(value, name)
    if value == 0 or value < -1:
        raise ValueError(f"{name} must be -1 or a positive integer, got {value!r}")
    return value


def scheme(value, name="scheme"):
    if not isinstance(value, str) or value not in SCHEMES:
        raise ValueError(f"{name} must be one of {SCHEMES}, got {value!r}")
    return value


def dtype(value, name="dtype", allowed=DTYPES):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def quantile_scalar(value, name="quantile"):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1] or an array of them, got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return value


def quantile(value, rows, n_groups, xp, name="quantile"):
    """A float in (0, 1], or an array of them shaped (rows, n_groups) (one clip per group)
    of the weight's kind (``xp`` None: a NumPy weight, which takes any array)."""
    if isinstance(value, numbers.Real) or not hasattr(value, "shape"):
        return quantile_scalar(value, name)
    shape = tuple(value.shape)
    if shape != (rows, n_groups):
        raise ValueError(f"{name} as an array must have shape (rows, n_groups) = {(rows, n_groups)}, got {shape}")
    qxp = _arrays.namespace(value)
    if xp is not None and qxp is not xp:  # the reference path computes in the weight's namespace
        raise TypeError(f"{name} as an array must be of the weight's kind ({xp.__name__}), got {type(value).__name__}")
    # half, single or double (exact in the compute dtype); wider or odd floats are refused,
    # not silently narrowed
    halves = (np.float16,) if xp is None else tuple(h for h in (getattr(qxp, "float16", None),) if h is not None)
    if not qxp.isdtype(value.dtype, "real floating") or value.dtype not in (qxp.float32, qxp.float64, *halves):
        raise TypeError(f"{name} as an array must be float16, float32 or float64, got dtype {value.dtype}")
    if not bool(qxp.all((value > 0) & (value <= 1))):
        raise ValueError(f"{name} values must all lie in (0, 1]")
    return value


#: ``weighting`` values of ``search_clip``.
WEIGHTINGS = (None, "magnitude")


def weighting(value):
    """``search_clip``'s ``weighting``; True for ``"magnitude"``."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"weighting must be None or 'magnitude', got {value!r}")
    if value not in WEIGHTINGS:
        raise ValueError(f"weighting must be None or 'magnitude', got {value!r}")
    return value == "magnitude"


def options(kwargs, accepted, func, flags):
    """``accepted`` (keyword -> default) updated with ``kwargs``; an unknown keyword is a
    ``TypeError`` (the reference ignores them, which hides typos). The keywords named in
    ``flags`` must be True or False."""
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{func}() got unexpected keyword argument(s) {unknown}; accepted: {sorted(accepted)}")
    result = dict(accepted)
    result.update(kwargs)
    for key in flags:
        if key in result:
            result[key] = flag(result[key], key)
    return result


def weight(x, name="weight", writable=True):
    """Check a weight; returns ``None`` for a NumPy array, else its array namespace."""
    if _arrays.is_numpy(x):
        if not _arrays.numpy_dtype_supported(x.dtype):
            raise TypeError(f"{name} must be a {_arrays.SUPPORTED_NAMES} array, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (rows, cols), got shape {x.shape}")
        if writable and not x.flags.writeable:
            raise ValueError(
                f"{name} is read-only; this function writes its result into {name} in place, "
                f"so pass a writable array (e.g. {name}.copy())"
            )
        if writable and overlapping(x.shape, x.strides, x.itemsize):
            raise ValueError(
                f"{name}'s elements overlap in memory (strides {x.strides} for shape {x.shape}, as from "
                f"as_strided or broadcast_to); writing in place would mix rows, so pass {name}.copy()"
            )
        return None
    try:
        xp = _arrays.namespace(x)
    except TypeError:
        raise TypeError(f"{name} must be an array (NumPy or any array-API array), got {type(x).__name__}") from None
    # float8 types are "real floating" to array_api_compat too, but have no arithmetic
    if not xp.isdtype(x.dtype, "real floating") or str(x.dtype).rsplit(".", 1)[-1] not in _ARRAY_API_FLOATS:
        raise TypeError(f"{name} must be a floating-point array ({_arrays.SUPPORTED_NAMES}), got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, cols), got shape {tuple(x.shape)}")
    return xp


def overlapping(shape, strides, itemsize):
    """Whether two elements of an array of ``shape`` and ``strides`` (in any unit, with
    ``itemsize`` in the same unit) share memory: the strides of the dimensions longer than
    one, smallest first, must each step past everything the smaller ones span. The one
    rule for NumPy arrays and torch tensors alike. An empty array overlaps nothing."""
    if 0 in tuple(shape):
        return False
    extent = itemsize
    for stride, size in sorted((abs(s), n) for s, n in zip(strides, shape) if n > 1):
        if stride < extent:
            return True
        extent = stride * size
    return False


def param_array(value, name, shape, xp, integers=False):
    """Check a per-group parameter array (a scale or zero point) of shape ``shape`` for a
    weight on path ``xp`` (None: NumPy, whose parameters must be NumPy arrays too; else
    an array of the weight's own namespace). Floating point, or also integer when
    ``integers``. Returns ``value``."""
    kinds = ("real floating", "integral") if integers else "real floating"
    expected = "a floating-point" + (" or integer" if integers else "")
    if xp is None:
        if not _arrays.is_numpy(value):
            raise TypeError(f"{name} must be a NumPy array like the weight, got {type(value).__name__}")
        ok = _arrays.numpy_dtype_supported(value.dtype) or (integers and value.dtype.kind in "iu")
    else:
        try:
            same = _arrays.namespace(value) is xp
        except TypeError:
            same = False
        if not same:
            raise TypeError(f"{name} must be an array of the weight's kind ({xp.__name__}), got {type(value).__name__}")
        ok = xp.isdtype(value.dtype, kinds)
    if not ok:
        raise TypeError(f"{name} must be {expected} array, got dtype {value.dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape (rows, n_groups) = {tuple(shape)}, got {tuple(value.shape)}")
    return value


class NonFiniteError(ValueError):
    """The weight holds NaN or Inf; ``row`` is the first row that does.

    A ``ValueError``, so ``except ValueError`` catches it as before; public as
    ``nbwoq.NonFiniteError``.
    """

    __module__ = "nbwoq"

    def __init__(self, message, row):
        super().__init__(message)
        self.row = row


def non_finite(row, skippable=True):
    """Raise ``NonFiniteError`` naming ``row``; ``skippable``: the caller can pass
    ``check_finite=False``, and the message says so."""
    message = f"weight has non-finite values (NaN or Inf), first in row {row}"
    if skippable:
        message += "; pass check_finite=False to skip this check"
    raise NonFiniteError(message, row)


def first_bad_row(finite_by_row):
    """Raise ``NonFiniteError`` for the first False in a per-row finiteness vector (a
    NumPy bool array)."""
    bad = np.flatnonzero(~finite_by_row)
    if bad.size:
        non_finite(int(bad[0]))


def check_finite(weight, xp):
    """Scan ``weight`` (validated; ``xp`` None for NumPy) for NaN and Inf and raise
    ``NonFiniteError`` naming the first row holding one. Reads, never writes."""
    if xp is None:
        bits, mask = _arrays.exponent_view(weight)
        finite = np.empty(weight.shape[0], dtype=np.bool_)
        _kernels_finite.finite_rows(bits, mask, finite)
        first_bad_row(finite)
        return
    finite = _reference_int.finite_by_row(weight, xp)
    if not bool(xp.all(finite)):
        non_finite(int(xp.argmax(xp.astype(~finite, xp.int8))))
