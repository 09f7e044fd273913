"""One tensor through the core: its float32 working copy, clip search and codes, or
integer round-to-nearest straight into packed bytes.

The arithmetic is the core's: ``nbwoq.quant_tensor(..., return_int=True)`` decides
every code, scale and zero point, and ``nbwoq.search_clip`` every clip ratio. This
module only prepares the float32 working copy and calls them.
"""

import math

import numpy as np

from nbwoq import _kernels_finite, _validate
from nbwoq._importance import weighted_error
from nbwoq._integer import int_range
from nbwoq._layout import group_layout
from nbwoq.formats import packing, storage
from nbwoq.formats.errors import InputError, printable
from nbwoq.quantize import quant_tensor
from nbwoq.hqq import refine_zero
from nbwoq.refit import refit_int


class Quantized:
    """One tensor's codes (float32, in the working copy), parameters and clip."""

    __slots__ = ("codes", "scale", "zp", "clip")

    def __init__(self, codes, scale, zp, clip):
        self.codes, self.scale, self.zp, self.clip = codes, scale, zp, clip


class Scratch:
    """Reusable buffers, one per role, grown to the largest tensor seen.

    Fresh memory costs a page fault and a page clear per 4 KiB on first touch, about as
    much as decoding into it; a run reuses the same pages for every tensor instead.
    A buffer is valid until the next ``get`` of the same role.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, role, shape, dtype):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf = self._buffers.get(role)
        if buf is None or buf.size < n:
            buf = self._buffers[role] = np.empty(max(n, 1), dtype=np.uint8)
        return buf[:n].view(dtype).reshape(shape)


def check_finite(array, dtype_name):
    """The core's finiteness scan, run on the stored values (bfloat16 reads half the bytes
    of the float32 copy); raises the core's ``ValueError`` naming the first bad row."""
    bits, mask = storage.exponent_view(array, dtype_name)
    finite = np.empty(array.shape[0], dtype=np.bool_)
    _kernels_finite.finite_rows(bits, mask, finite)
    _validate.first_bad_row(finite)


def _input_error(name, exc):
    # The core's hint about check_finite= is for API callers, not for the command line.
    return InputError(f"tensor {printable(name)}: {str(exc).split('; pass check_finite')[0]}")


def non_finite_error(name, row):
    """The ``InputError`` for tensor ``name`` whose row ``row`` holds NaN or Inf, worded
    as ``clip_ratios`` words it."""
    try:
        _validate.non_finite(row)
    except ValueError as exc:
        return _input_error(name, exc)


def stored_error(name, err, hint=""):
    """``err``, the sum of squared errors of what the file stores for tensor ``name``
    (float64, from the stored values); an ``InputError`` (with ``hint`` appended) when it
    is not finite. The weight was checked finite first, so a stored value overflowed its
    float type: a float16 scale or value past 65504 (GPTQ's scales; GGUF's block scales
    and F16), a bfloat16 or float32 one past 3.4e38. No engine could use that file."""
    if not math.isfinite(err):
        raise InputError(f"tensor {printable(name)}: the output cannot hold its values (a stored scale or value "
                         "passes its float type's range: float16's 65504, or float32's 3.4e38), so the file "
                         f"would read as Inf or NaN; leave the tensor out with --exclude{hint}")
    return err


def clip_ratios(array, dtype_name, options, name):
    """Check ``array`` (stored values) for NaN/Inf and run the clip search on it, without
    a float32 copy (the core reads float16 and bfloat16 in place).

    Returns ``(quantile, clip)``: the core's ``quantile`` (1.0, a ratio, or per-group
    ratios (rows, n_groups)) and the report's clip (None, a ratio, or min/mean/max).
    """
    try:
        check_finite(array, dtype_name)
        if options.clip == "none":
            return 1.0, None
        ratio = options.search(storage.as_float(array, dtype_name))
    except ValueError as exc:
        raise _input_error(name, exc) from None
    if options.clip == "group":
        ratio = np.asarray(ratio, dtype=np.float32)
        return ratio, dict(min=float(ratio.min()), mean=float(ratio.mean()), max=float(ratio.max()))
    return ratio, float(ratio)


def quantize_rows(array, dtype_name, options, quantile, name, scratch=None):
    """The codes of ``array`` (stored rows already checked by ``clip_ratios``), with the
    ``quantile`` of these rows. ``codes`` is ``scratch``'s ``"work"`` float32 buffer."""
    out = None if scratch is None else scratch.get("work", array.shape, np.float32)
    work = storage.widen(array, dtype_name, out=out)
    try:
        if options.method == "refit":
            _, scale, zp = refit_int(work, options.bits, options.group_size, options.scheme, options.full_range,
                                     quantile=quantile, check_finite=False)
        elif options.method == "hqq":
            _, scale, zp = refine_zero(work, options.bits, options.group_size, options.scheme, quantile=quantile,
                                       check_finite=False)
        else:
            _, scale, zp = quant_tensor(work, **options.core_kwargs(), quantile=quantile, return_int=True,
                                        check_finite=False)
    except ValueError as exc:
        raise _input_error(name, exc) from None
    return Quantized(work, scale, zp, None)


def quantize(array, dtype_name, options, name, scratch=None):
    """Quantize the whole tensor ``array`` (storage dtype ``dtype_name``) with the core.

    Returns a ``Quantized`` whose ``codes`` is a float32 array holding the codes: fresh,
    or ``scratch``'s ``"work"`` buffer when a ``Scratch`` is given.
    Non-finite weights raise ``InputError`` naming the tensor.
    """
    quantile, clip = clip_ratios(array, dtype_name, options, name)
    q = quantize_rows(array, dtype_name, options, quantile, name, scratch)
    q.clip = clip
    return q


def compares_with_rtn(options):
    """True when the report states RTN's weighted error next to the method's: integer
    settings with a method other than round to nearest."""
    return options.gguf_type is None and options.method != "rtn"


def weighted_errors(array, dtype_name, options, q):
    """``(rtn_err, method_err, norm)``: importance-weighted squared error sums
    (``nbwoq._importance``) of plain round to nearest (no clip) and of the codes ``q`` of
    rows ``array`` (the core's codes and float32 parameters, before the file's rounding
    of scales), and the weighted squared norm of the rows."""
    x = storage.widen(array, dtype_name)
    rtn = quant_tensor(storage.widen(array, dtype_name), **options.core_kwargs(), check_finite=False)
    size, _ = group_layout(x.shape[1], options.group_size)
    g = np.arange(x.shape[1]) // size
    codes = q.codes if q.zp is None else q.codes - q.zp[:, g]
    rtn_err, norm = weighted_error(x, rtn, options.group_size)
    method_err, _ = weighted_error(x, codes * q.scale[:, g], options.group_size)
    return rtn_err, method_err, norm


#: Rows of the float32 working copy held at once: the general path quantizes and
#: encodes a tensor in blocks of rows, so its memory follows this, not the tensor.
WORK_BYTES = 16 << 20


def row_blocks(rows, cols):
    """``(start, stop)`` row ranges of at most ``WORK_BYTES`` of float32 each."""
    step = max(1, WORK_BYTES // max(4 * cols, 1))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def quantile_rows(quantile, start, stop):
    """The slice of ``quantile`` (scalar or per group) that belongs to rows ``start:stop``."""
    return quantile[start:stop] if isinstance(quantile, np.ndarray) else quantile


def one_pass(options):
    """True when a tensor can go from source to the packed nbwoq layout in one pass
    (``quantize_packed``): round-to-nearest integer codes without a clip search."""
    return options.dtype == "int" and options.clip == "none" and options.method == "rtn"


def quantize_packed(array, dtype_name, options, name, scratch, zeros_dtype):
    """Integer round-to-nearest straight from the source into nbwoq's packed codes.

    The one-pass kernel ``packing.quant_pack_int`` reads the stored values (bfloat16
    and float16 through their bit patterns, no float32 copy) and makes the same codes,
    scales and zero points as ``nbwoq.quant_tensor`` on the float32 copy (tests hold
    them equal), packing and measuring each row while it is in cache.

    Returns ``(packed, scale, zeros, err_sum, norm_sum)``; ``zeros`` is None for
    symmetric schemes. The arrays are ``scratch`` buffers, valid until the next call.
    Non-finite weights raise ``InputError`` naming the tensor and row, as ``quantize``.
    """
    rows, cols = array.shape
    size, n_groups = group_layout(cols, options.group_size)
    keep_zp = options.scheme == "asym"
    packed = scratch.get("packed", (rows, packing.packed_cols(cols, options.slot)), np.uint8)
    scale = scratch.get("scale", (rows, n_groups), np.float32)
    zeros = scratch.get("zeros", (rows, n_groups) if keep_zp else (1, 1), zeros_dtype)
    err = scratch.get("err", (rows,), np.float64)
    norm = scratch.get("norm", (rows,), np.float64)
    bad = scratch.get("bad", (rows,), np.bool_)
    _, _, divisor = int_range(options.bits, options.scheme == "sym", options.full_range)
    packing.quant_pack_int(storage.kernel_view(array, dtype_name), size, n_groups, _ONE_QUANTILE,
                            np.float32(options.qmin), np.float32(options.qmax), np.float32(divisor),
                            options.scheme == "sym", options.full_range, options.slot,
                            scale, zeros, keep_zp, packed, err, norm, bad)
    try:
        _validate.first_bad_row(~bad)
    except ValueError as exc:
        raise _input_error(name, exc) from None
    return packed, scale, zeros if keep_zp else None, float(err.sum()), float(norm.sum())


_ONE_QUANTILE = np.ones((1, 1), dtype=np.float32)
