"""What to quantize and how: options, tensor selection, and one tensor through the core.

The arithmetic is the core's: ``nbwoq.quant_tensor(..., return_int=True)`` decides
every code, scale and zero point, and ``nbwoq.search_clip`` every clip ratio. This
module only prepares the float32 working copy and calls them.
"""

import fnmatch
import re
import time

import numpy as np

import nbwoq
from nbwoq import _arrays, _kernels_finite, _validate
from nbwoq.formats import packing
from nbwoq._integer import int_range
from nbwoq._layout import group_layout
from nbwoq._tables import FLOAT_MAPPING, INT_MAPPING
from nbwoq.formats.source import InputError

CLIP_MODES = ("none", "tensor", "group")

# Default selection: 2-D ``.weight`` tensors inside the repeated blocks (``layers.3.``,
# ``blk.3.``, ``h.3.``) that are not norms. That is every linear layer of a decoder
# block, and it leaves embeddings, the output head, norms and biases in float, which
# is what GPTQ checkpoints and most engines expect.
_BLOCK = re.compile(r"(^|\.)(\d+)\.")
_NOT_LINEAR = re.compile(r"norm|ln_|layernorm|embed|embd|wte|wpe|rotary|conv", re.IGNORECASE)


class QuantOptions:
    """The quantization settings of one run, validated against the core up front."""

    def __init__(self, bits=4, group_size=128, scheme="asym", dtype="int", full_range=False, clip="none",
                 include=(), exclude=(), clip_grid=None, clip_weighting="magnitude"):
        self.bits = _validate.bits(bits, "--bits")
        if self.bits <= 0:
            raise InputError(f"--bits must be a positive integer, got {bits!r}")
        self.group_size = _validate.group_size(group_size, "--group-size")
        self.scheme = _validate.scheme(scheme, "--scheme")
        self.dtype = _validate.dtype(dtype, "--dtype")
        self.full_range = bool(full_range)
        if clip not in CLIP_MODES:
            raise InputError(f"--clip must be one of {CLIP_MODES}, got {clip!r}")
        self.clip = clip
        if clip_grid is not None and clip == "none":
            raise InputError("--clip-grid needs --clip tensor or --clip group")
        self.clip_grid = clip_grid
        if clip_weighting not in (None, "magnitude"):
            raise InputError(f"--clip-weighting must be 'magnitude' or none, got {clip_weighting!r}")
        self.clip_weighting = clip_weighting
        self.include = tuple(include or ())
        self.exclude = tuple(exclude or ())
        self.codebook = self.dtype != "int"
        if self.codebook:
            # Codebook codes are the signed INT_MAPPING codes (-8..7): store them shifted.
            self.qmin, self.qmax = -8, 7
            self.slot = 4
        else:
            self.qmin, self.qmax, _ = int_range(self.bits, self.scheme == "sym", self.full_range)
            self.slot = packing.slot_bits(max(self.qmax - self.qmin, 1).bit_length())
        self._probe()

    def _probe(self):
        """Run the core once on a tiny weight so every bad combination fails before any write."""
        w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
        try:
            if self.clip != "none":
                search = getattr(nbwoq, "search_clip", None)
                if search is None:
                    raise InputError(f"--clip {self.clip} needs nbwoq.search_clip, which this build does not have")
                self._search(w)
            nbwoq.quant_tensor(w, **self.core_kwargs(), return_int=True)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"these settings are refused by the quantizer: {exc}") from None

    def core_kwargs(self):
        return dict(bits=self.bits, group_size=self.group_size, scheme=self.scheme, dtype=self.dtype,
                    full_range=self.full_range)

    def _search(self, w):
        kwargs = dict(bits=self.bits, group_size=self.group_size, scheme=self.scheme, dtype=self.dtype,
                      enable_full_range=self.full_range)
        if self.clip == "group":
            kwargs["per_group"] = True
        if self.clip_grid is not None:
            kwargs["grid"] = self.clip_grid
        return nbwoq.search_clip(w, weighting=self.clip_weighting, **kwargs)

    def label(self):
        if self.codebook:
            text = f"{self.dtype} g{self.group_size}"
        else:
            text = f"int{self.bits} {self.scheme}{' full' if self.full_range else ''} g{self.group_size}"
        if self.clip == "none":
            return text
        grid = "" if self.clip_grid is None else f" grid={_grid_text(self.clip_grid)}"
        plain = "" if self.clip_weighting else " unweighted"
        return text + f" clip={self.clip}{grid}{plain}"

    def as_dict(self):
        return dict(bits=self.bits, group_size=self.group_size, scheme=self.scheme, dtype=self.dtype,
                    full_range=self.full_range, clip=self.clip, clip_grid=_grid_json(self.clip_grid),
                    clip_weighting=self.clip_weighting if self.clip != "none" else None,
                    include=list(self.include),
                    exclude=list(self.exclude))

    def codebook_lut(self):
        if not self.codebook:
            return np.zeros(1, dtype=np.float32)
        return packing.codebook_lut(FLOAT_MAPPING[self.dtype], INT_MAPPING[self.dtype], self.qmin, self.slot)

    def selects(self, name, shape, dtype_name):
        """True when tensor ``name`` is quantized (else it is copied unchanged)."""
        if len(shape) != 2 or 0 in shape:
            return False
        if self.include:
            chosen = any(fnmatch.fnmatchcase(name, p) for p in self.include)
        else:
            chosen = name.endswith(".weight") and bool(_BLOCK.search(name)) and not _NOT_LINEAR.search(name)
        if chosen and any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            chosen = False
        if chosen and not quantizable_dtype(dtype_name):
            raise InputError(f"tensor {name!r} has dtype {dtype_name}, which cannot be quantized "
                             "(float32, float16 or bfloat16 expected); exclude it with --exclude")
        return chosen


def parse_grid(text):
    """``--clip-grid``: a candidate count (``80``) or explicit ratios (``1,0.99,0.98``)."""
    try:
        if "," not in text and "." not in text:
            return int(text)
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--clip-grid must be a count or comma-separated ratios, got {text!r}") from None


def _grid_json(grid):
    return list(grid) if isinstance(grid, (list, tuple)) else grid


def _grid_text(grid):
    if isinstance(grid, (list, tuple)):
        return f"{max(grid):g}..{min(grid):g}({len(grid)})"
    return str(grid)


def quantizable_dtype(dtype_name):
    """Float storage the kernels decode, or any GGUF type gguf-py dequantizes."""
    return dtype_name not in ("F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                              "F8_E4M3", "F8_E5M2", "I64")


class Quantized:
    """One tensor's codes (float32, in the working copy), parameters and clip."""

    __slots__ = ("codes", "scale", "zp", "clip", "seconds")

    def __init__(self, codes, scale, zp, clip, seconds):
        self.codes, self.scale, self.zp, self.clip, self.seconds = codes, scale, zp, clip, seconds


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


def working_copy(array, dtype_name, out=None):
    """A writable float32 copy of ``array`` (storage view decoded in a parallel kernel)."""
    if out is None:
        out = np.empty(array.shape, dtype=np.float32)
    if dtype_name == "F32" and array.dtype == np.float32:
        np.copyto(out, array)
    else:
        packing.decode_rows(packing.storage_view(array, dtype_name), out)
    return out


def check_finite(array, dtype_name):
    """The core's finiteness scan, run on the stored values (bfloat16 reads half the bytes
    of the float32 copy); raises the core's ``ValueError`` naming the first bad row."""
    if dtype_name == "BF16":  # bfloat16 has float32's 8-bit exponent field: 0x7F80 in 16 bits
        bits, mask = array.view(np.uint16), np.uint16(0x7F80)
    else:
        bits, mask = _arrays.exponent_view(array)
    finite = np.empty(array.shape[0], dtype=np.bool_)
    _kernels_finite.finite_rows(bits, mask, finite)
    _validate.first_bad_row(finite)


def quantize(array, dtype_name, options, name, scratch=None):
    """Quantize the tensor ``array`` (storage dtype ``dtype_name``) with the core.

    Returns a ``Quantized`` whose ``codes`` is a float32 array holding the codes: fresh,
    or ``scratch``'s ``"work"`` buffer when a ``Scratch`` is given.
    Non-finite weights raise ``InputError`` naming the tensor.
    """
    t0 = time.perf_counter()
    clip = None
    quantile = 1.0
    try:
        check_finite(array, dtype_name)
        out = None if scratch is None else scratch.get("work", array.shape, np.float32)
        work = working_copy(array, dtype_name, out=out)
        if options.clip != "none":
            ratio = options._search(work)
            if options.clip == "group":
                ratio = np.asarray(ratio, dtype=np.float32)
                clip = dict(min=float(ratio.min()), mean=float(ratio.mean()), max=float(ratio.max()))
            else:
                clip = float(ratio)
            quantile = ratio
        # checked above, on the source: the core need not scan the copy again
        _, scale, zp = nbwoq.quant_tensor(work, **options.core_kwargs(), quantile=quantile, return_int=True,
                                          check_finite=False)
    except ValueError as exc:
        # The core's hint about check_finite= is for API callers, not for the command line.
        raise InputError(f"tensor {name!r}: {str(exc).split('; pass check_finite')[0]}") from None
    return Quantized(work, scale, zp, clip, time.perf_counter() - t0)


def one_pass(options):
    """True when a tensor can go from source to the packed nbwoq layout in one pass
    (``quantize_packed``): integer codes without a clip search."""
    return options.dtype == "int" and options.clip == "none"


def quantize_packed(array, dtype_name, options, name, scratch, zeros_dtype):
    """Integer round-to-nearest straight from the source into nbwoq's packed codes.

    The one-pass kernel ``packing.quant_pack_int`` reads the stored values (bfloat16
    and float16 through their bit patterns, no float32 copy) and makes the same codes,
    scales and zero points as ``nbwoq.quant_tensor`` on the float32 copy (tests hold
    them equal), packing and measuring each row while it is in cache.

    Returns ``(packed, scale, zeros, err_sum, norm_sum, seconds)``; ``zeros`` is None for
    symmetric schemes. The arrays are ``scratch`` buffers, valid until the next call.
    Non-finite weights raise ``InputError`` naming the tensor and row, as ``quantize``.
    """
    t0 = time.perf_counter()
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
    packing.quant_pack_int(packing.storage_view(array, dtype_name), size, n_groups, _ONE_QUANTILE,
                            np.float32(options.qmin), np.float32(options.qmax), np.float32(divisor),
                            options.scheme == "sym", options.full_range, options.slot,
                            scale, zeros, keep_zp, packed, err, norm, bad)
    try:
        _validate.first_bad_row(~bad)
    except ValueError as exc:
        raise InputError(f"tensor {name!r}: {str(exc).split('; pass check_finite')[0]}") from None
    return packed, scale, zeros if keep_zp else None, float(err.sum()), float(norm.sum()), time.perf_counter() - t0


_ONE_QUANTILE = np.ones((1, 1), dtype=np.float32)


def requantizer():
    """The core's ``quant_weight_w_scale`` when it clamps (takes ``bits=``), else None.

    Formats that store float16 scales use it to decide the codes with the rounded scale.
    """
    fn = getattr(nbwoq, "quant_weight_w_scale", None)
    if fn is None:
        return None
    try:
        fn(np.zeros((1, 8), np.float32), np.ones((1, 1), np.float32), None, group_size=8, bits=4)
    except (TypeError, ValueError):
        return None
    return fn
