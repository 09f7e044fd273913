"""nbwoq's own safetensors layout: packed codes, float32 scales, integer zero points.

For a quantized tensor ``W`` (rows, cols) the file holds

``W.codes``  uint8 (rows, bytes per row)
    unsigned codes ``code - qmin`` packed along the row (``packing`` describes it);
``W.scales`` float32 (rows, n_groups)
    the core's scales, unrounded, so decoding gives back the fake-quant exactly;
``W.zeros``  uint8 or uint16 (rows, n_groups)
    the zero points of asymmetric integer groups (absent otherwise).

The header's ``__metadata__`` holds ``format = "nbwoq"``, ``nbwoq.version`` and
``nbwoq.tensors``: a JSON object giving, per quantized tensor, its shape, source dtype,
bits, slot width, group size, scheme, codebook name and ``qmin``. Every other tensor is
stored unchanged under its own name.
"""

import json

import numpy as np

from nbwoq._layout import group_layout
from nbwoq.formats import packing, quantizer, storage
from nbwoq.formats.errors import InputError
from nbwoq.formats.writer import Encoding, FolderWriter

FORMAT_NAME = "nbwoq"
VERSION = "1"
SUFFIXES = (".codes", ".scales", ".zeros")


def tensor_meta(info, options):
    return dict(shape=list(info.shape), dtype=info.dtype, bits=options.bits, slot=options.slot,
                group_size=options.group_size, scheme=options.scheme, codebook=options.dtype,
                full_range=options.full_range, qmin=options.qmin)


def zeros_dtype(qmax):
    """Stored dtype name of integer zero points up to ``qmax``."""
    return "U8" if qmax <= 255 else "U16"


def has_zeros(options):
    return not options.codebook and options.scheme == "asym"


class NbwoqWriter(FolderWriter):
    """Plans and encodes the tensors of one output shard. Every core setting has a
    layout here, so no tensor is refused."""

    overflow_hint = ""  # its scales are float32 already

    copies_verbatim = True

    def __init__(self, options, source):
        super().__init__(options, source)
        if source is not None and source.kind == "gguf":
            raise InputError("a GGUF source is written as GGUF: use OUT.gguf (or --format gguf); for an nbwoq "
                             "folder, start from the model's Hugging Face folder (config.json, tokenizer and "
                             "safetensors)")
        self.lut = options.codebook_lut()

    def specs(self, info, selected):
        if not selected:
            return [(info.name, info.dtype, info.shape)]
        rows, cols = info.shape
        _, n_groups = group_layout(cols, self.options.group_size)
        out = [(info.name + ".codes", "U8", (rows, packing.packed_cols(cols, self.options.slot))),
               (info.name + ".scales", "F32", (rows, n_groups))]
        if has_zeros(self.options):
            out.append((info.name + ".zeros", zeros_dtype(self.options.qmax), (rows, n_groups)))
        return out

    def metadata(self, selected_infos):
        tensors = {info.name: tensor_meta(info, self.options) for info in selected_infos}
        return {"format": FORMAT_NAME, "nbwoq.version": VERSION, "nbwoq.tensors": json.dumps(tensors)}

    def copy(self, info, array, dtype_name):
        return [(info.name, array)]

    def one_pass(self):
        return quantizer.one_pass(self.options)

    def quantize_encode(self, info, array, dtype_name, scratch):
        """Integer RTN in one pass from the source (``quantizer.one_pass`` settings); the
        outputs are ``scratch`` buffers valid until its next use."""
        packed, scale, zeros, err, norm = quantizer.quantize_packed(
            array, dtype_name, self.options, info.name, scratch, storage.DTYPES[zeros_dtype(self.options.qmax)])
        outputs = [(info.name + ".codes", packed), (info.name + ".scales", scale)]
        if zeros is not None:
            outputs.append((info.name + ".zeros", zeros))
        return outputs, err, norm

    def begin(self, info, scratch):
        o = self.options
        rows, cols = info.shape
        _, n_groups = group_layout(cols, o.group_size)
        arrays = dict(codes=scratch.get("packed", (rows, packing.packed_cols(cols, o.slot)), np.uint8),
                      scales=scratch.get("scales", (rows, n_groups), np.float32))
        if has_zeros(o):
            arrays["zeros"] = scratch.get("zeros", (rows, n_groups), storage.DTYPES[zeros_dtype(o.qmax)])
        return Encoding(info, arrays)

    def encode_rows(self, enc, start, array, dtype_name, q):
        o = self.options
        rows, cols = array.shape
        stop = start + rows
        size, n_groups = group_layout(cols, o.group_size)
        zp = q.zp if q.zp is not None else np.zeros((rows, max(n_groups, 1)), dtype=np.float32)
        packing.pack_rows(q.codes, storage.kernel_view(array, dtype_name), q.scale, zp, size, np.float32(o.qmin),
                          o.slot, self.lut, o.codebook, True, enc.arrays["codes"][start:stop], enc.err[start:stop],
                          enc.norm[start:stop])
        enc.arrays["scales"][start:stop] = q.scale
        if "zeros" in enc.arrays:
            enc.arrays["zeros"][start:stop] = q.zp  # whole numbers in [0, qmax]; -0.0 -> 0

    def finish(self, enc):
        name = enc.info.name
        return [(name + "." + part, enc.arrays[part]) for part in ("codes", "scales", "zeros") if part in enc.arrays]
