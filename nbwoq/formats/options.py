"""The settings of one quantization into a file: validated up front, and which tensors
they select.

``QuantOptions`` checks every setting against the core before anything is read or
written, and holds the stored-code layout (``qmin``, ``qmax``, ``slot``) that writers and
readers share (``packing.code_layout``).
"""

import fnmatch
import re

import numpy as np

from nbwoq._tables import FLOAT_MAPPING, INT_MAPPING
from nbwoq._validate import bits as _bits, dtype as _dtype, group_size as _group_size, scheme as _scheme
from nbwoq.clip import search_clip
from nbwoq.formats import packing, storage
from nbwoq.formats.errors import InputError
from nbwoq.quantize import quant_tensor

CLIP_MODES = ("none", "tensor", "group")
#: How codes are decided. Integer settings: "rtn" (round to nearest, the reference
#: library's), "refit" (``nbwoq.refit_int``: importance-weighted least-squares refit of
#: each group's scale and zero point), "hqq" (``nbwoq.refine_zero``, asym only: HQQ's
#: lp zero-point iterations, the zero rounded and kept where it lowers the lp error) or
#: "sinq" (``nbwoq.dual_scale``'s column scales folded into each layer's feeder, then
#: round to nearest: ``column_fold``). GGML block types (--type): "reference", llama.cpp's
#: data-free quantize_row_*_ref (llama-quantize without an importance matrix), byte for byte;
#: "search", nbwoq's search from the reference's blocks to a lower weighted error in the
#: same bytes layout (``ggml_blocks.search_rows``), opt-in for its cost: its Q4_K_M
#: perplexity is below llama-quantize's on every model and text measured
#: (``scripts/gguf_perplexity.py``), but it encodes several times slower than the reference.
#: The first of each tuple is the default.
INTEGER_METHODS = ("rtn", "refit", "hqq", "sinq")
GGML_METHODS = ("reference", "search")
METHODS = INTEGER_METHODS + GGML_METHODS

# Default selection: 2-D ``.weight`` tensors inside the repeated blocks (``layers.3.``,
# ``blk.3.``, ``h.3.``) that are not norms. That is every linear layer of a decoder
# block, and it leaves embeddings, the output head, norms and biases in float, which
# is what GPTQ checkpoints and most engines expect.
_BLOCK = re.compile(r"(^|\.)(\d+)\.")
_NOT_LINEAR = re.compile(r"norm|ln_|layernorm|embed|embd|wte|wpe|rotary|conv", re.IGNORECASE)


class QuantOptions:
    """The quantization settings of one run, validated against the core up front."""

    def __init__(self, bits=4, group_size=128, scheme="asym", dtype="int", full_range=False, clip="none",
                 include=(), exclude=(), clip_grid=None, clip_weighting="magnitude", python_names=False,
                 gguf_type=None, method=None, pure=False):
        def arg(name):  # errors name the setting as the caller spelled it
            return name if python_names else "--" + name.replace("_", "-")

        self.bits = _bits(bits, arg("bits"))
        if self.bits <= 0:
            raise InputError(f"{arg('bits')} must be a positive integer, got {bits!r}")
        self.group_size = _group_size(group_size, arg("group_size"))
        self.scheme = _scheme(scheme, arg("scheme"))
        self.dtype = _dtype(dtype, arg("dtype"))
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
        # A llama.cpp file type (--type): its GGML block types decide the codes, not the
        # integer settings above; method "reference" is llama.cpp's own data-free encoder.
        self.gguf_type = None if gguf_type is None else str(gguf_type).upper()
        if self.gguf_type is not None:
            from nbwoq.formats.gguf_mix import file_type

            file_type(self.gguf_type)
            if clip != "none":
                raise InputError("--clip applies to the integer formats; --type chooses GGML block types, whose "
                                 "encoders search their own scales")
            if self.include:
                raise InputError("--include has no effect with --type (llama.cpp's rules pick the tensors); "
                                 "use --exclude to keep some unquantized")
        allowed = GGML_METHODS if self.gguf_type is not None else INTEGER_METHODS
        if method is None:
            method = allowed[0]
        if method not in allowed:
            what = f"--type {self.gguf_type}" if self.gguf_type is not None else "integer settings"
            raise InputError(f"--method must be one of {allowed} with {what}, got {method!r}")
        if method == "refit" and self.dtype != "int":
            raise InputError("--method refit refits integer scales and zero points: use --dtype int")
        if method == "hqq" and (self.dtype != "int" or self.scheme != "asym"):
            raise InputError("--method hqq refines integer zero points: use --dtype int --scheme asym")
        if method == "sinq" and (self.dtype != "int" or clip != "none"):
            raise InputError("--method sinq folds column scales for integer round to nearest: use --dtype int "
                             "and no --clip")
        self.method = method
        self.pure = bool(pure)
        self.codebook = self.dtype != "int"
        self.qmin, self.qmax, self.slot = packing.code_layout(self.bits, self.scheme, self.full_range, self.codebook)
        self._probe()

    def _probe(self):
        """Run the core once on a tiny weight so every bad combination fails before any write."""
        w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
        try:
            if self.clip != "none":
                self.search(w)
            quant_tensor(w, **self.core_kwargs(), return_int=True)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"these settings are refused by the quantizer: {exc}") from None

    def core_kwargs(self):
        return dict(bits=self.bits, group_size=self.group_size, scheme=self.scheme, dtype=self.dtype,
                    full_range=self.full_range)

    def search(self, w):
        """The clip ratio(s) of float32 weight ``w`` for these settings."""
        kwargs = dict(bits=self.bits, group_size=self.group_size, scheme=self.scheme, dtype=self.dtype,
                      enable_full_range=self.full_range)
        if self.clip == "group":
            kwargs["per_group"] = True
        if self.clip_grid is not None:
            kwargs["grid"] = self.clip_grid
        return search_clip(w, weighting=self.clip_weighting, **kwargs)

    def label(self):
        if self.gguf_type is not None:
            return f"{self.gguf_type}{' pure' if self.pure else ''}, method {self.method}"
        if self.codebook:
            text = f"{self.dtype} g{self.group_size}"
        else:
            text = f"int{self.bits} {self.scheme}{' full' if self.full_range else ''} g{self.group_size}"
        if self.method in ("refit", "hqq", "sinq"):
            text += " " + self.method
        if self.clip == "none":
            return text
        grid = "" if self.clip_grid is None else f" grid={_grid_text(self.clip_grid)}"
        plain = "" if self.clip_weighting else " unweighted"
        return text + f" clip={self.clip}{grid}{plain}"

    def as_dict(self):
        return dict(bits=self.bits, group_size=self.group_size, scheme=self.scheme, dtype=self.dtype,
                    full_range=self.full_range, clip=self.clip, clip_grid=_grid_json(self.clip_grid),
                    clip_weighting=self.clip_weighting if self.clip != "none" else None,
                    include=list(self.include), exclude=list(self.exclude),
                    gguf_type=self.gguf_type, method=self.method, pure=self.pure)

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
        if chosen and not storage.quantizable(dtype_name):
            raise InputError(f"tensor {name!r} has dtype {dtype_name}, which cannot be quantized "
                             "(float32, float16 or bfloat16 expected); exclude it with --exclude")
        return chosen


def _grid_json(grid):
    return list(grid) if isinstance(grid, (list, tuple)) else grid


def _grid_text(grid):
    if isinstance(grid, (list, tuple)):
        return f"{max(grid):g}..{min(grid):g}({len(grid)})"
    return str(grid)
