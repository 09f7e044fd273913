"""GPTQ export: the v1 / "optimum" safetensors layout transformers loads with gptqmodel.

Per linear layer ``P`` (weight ``(out, in)``):

``P.qweight`` int32 (in / per, out)
    unsigned codes packed along the input dimension, lowest bits first
    (``per = 32 // bits``);
``P.qzeros``  int32 (n_groups, out / per)
    zero points packed along the output dimension;
``P.scales``  float16 (n_groups, out);
``P.g_idx``   int32 (in,) = ``i // group_size``.

Symmetric groups use zero point ``2**(bits-1)`` and are written as v1
(``checkpoint_format: "gptq"``), which stores ``zero - 1``. v1 cannot store a zero point
of 0, which asymmetric groups with no negative weight need, so asymmetric checkpoints are
written as ``checkpoint_format: "gptq_v2"`` (zero stored as is), which decodes exactly;
nothing is silently corrupted.
"""

import json

import numpy as np

from nbwoq._layout import group_layout
from nbwoq._version import __version__
from nbwoq.formats import packing, storage
from nbwoq.formats.errors import InputError
from nbwoq.formats.writer import Encoding, FolderWriter
from nbwoq.quantize import quant_weight_w_scale


class GptqWriter(FolderWriter):
    """Plans and encodes the tensors of one GPTQ output shard."""

    copies_verbatim = True

    def __init__(self, options, source):
        super().__init__(options, source)
        o = options
        if source.kind != "safetensors" or not source.config:
            raise InputError("--format gptq needs a Hugging Face folder source (config.json and safetensors); "
                             "a GGUF source is written as GGUF (OUT.gguf)")
        if o.codebook:
            raise InputError(f"--format gptq stores integer codes: use --dtype int (got {o.dtype})")
        if o.bits not in (2, 4, 8):
            raise InputError(f"--format gptq packs 2, 4 or 8 bits into int32 here (got --bits {o.bits})")
        self.per = 32 // o.bits
        self.sym = o.scheme == "sym"
        self.checkpoint_format = "gptq" if self.sym else "gptq_v2"

    def check_tensor(self, info, selected):
        if not selected:
            return
        if not info.name.endswith(".weight"):
            raise InputError(f"--format gptq quantizes '.weight' tensors of linear layers; {info.name!r} is not one")
        out_f, in_f = info.shape
        if in_f % self.per or out_f % self.per:
            raise InputError(f"--format gptq: tensor {info.name!r} {list(info.shape)} needs both dimensions "
                             f"divisible by {self.per} for {self.options.bits}-bit int32 packing")

    def specs(self, info, selected):
        if not selected:
            return [(info.name, info.dtype, info.shape)]
        out_f, in_f = info.shape
        _, n_groups = group_layout(in_f, self.options.group_size)
        p = info.name[: -len(".weight")]
        return [(p + ".qweight", "I32", (in_f // self.per, out_f)),
                (p + ".qzeros", "I32", (n_groups, out_f // self.per)),
                (p + ".scales", "F16", (n_groups, out_f)),
                (p + ".g_idx", "I32", (in_f,))]

    def metadata(self, selected_infos):
        return {"format": "pt", "quantized_by": f"nbwoq {__version__}"}

    def copy(self, info, array, dtype_name):
        return [(info.name, array)]

    def begin(self, info, scratch):
        out_f, in_f = info.shape
        _, n_groups = group_layout(in_f, self.options.group_size)
        return Encoding(info, dict(
            packed_t=scratch.get("packed_t", (out_f, in_f // self.per), np.uint32),  # row-major: (out, in / per)
            scale16=scratch.get("scale16", (out_f, n_groups), np.float16),
            zero_u=scratch.get("zero_u", (out_f, n_groups), np.int64)))

    def encode_rows(self, enc, start, array, dtype_name, q):
        o = self.options
        rows, in_f = array.shape
        stop = start + rows
        size, n_groups = group_layout(in_f, o.group_size)
        with np.errstate(over="ignore"):  # past 65504: Inf, refused by quantizer.stored_error
            scale16 = q.scale.astype(np.float16)
        scale32 = scale16.astype(np.float32)
        zp = q.zp if q.zp is not None else np.zeros((rows, n_groups), dtype=np.float32)
        # Decide the codes with the float16 scale the file stores (its own fake-quant).
        work = storage.widen(array, dtype_name, out=q.codes)
        quant_weight_w_scale(work, scale32, q.zp, group_size=o.group_size, bits=o.bits)
        no_pack = np.empty((rows, 0), dtype=np.uint8)
        packing.pack_rows(q.codes, storage.kernel_view(array, dtype_name), scale32, zp, size, np.float32(o.qmin),
                          o.slot, np.zeros(1, np.float32), False, False, no_pack, enc.err[start:stop],
                          enc.norm[start:stop])
        packing.pack_gptq_rows(q.codes, np.float32(o.qmin), o.bits, enc.arrays["packed_t"][start:stop])
        enc.arrays["scale16"][start:stop] = scale16
        # Unsigned zero point: asym codes are already unsigned; sym codes were shifted by -qmin.
        enc.arrays["zero_u"][start:stop] = (zp - np.float32(o.qmin)).astype(np.int64)

    def finish(self, enc):
        o = self.options
        out_f, in_f = enc.info.shape
        size, _ = group_layout(in_f, o.group_size)
        zero_u = enc.arrays["zero_u"]
        if self.checkpoint_format == "gptq":
            zero_u = zero_u - 1  # v1 stores zero - 1
        qzeros = packing.pack_columns_u32(np.ascontiguousarray(zero_u.T) & ((1 << o.bits) - 1), o.bits)
        g_idx = (np.arange(in_f, dtype=np.int32) // np.int32(size)).astype(np.int32)
        p = enc.info.name[: -len(".weight")]
        return [(p + ".qweight", np.ascontiguousarray(enc.arrays["packed_t"].T).view(np.int32)),
                (p + ".qzeros", qzeros), (p + ".scales", np.ascontiguousarray(enc.arrays["scale16"].T)),
                (p + ".g_idx", g_idx)]

    def method(self):
        """What decided the codes: ``rtn``, ``refit`` or ``hqq`` (``--method``), with
        ``+clip-<mode>`` after a clip search; ``sinq+rtn`` for column scales folded into
        the feeders before round to nearest."""
        clip = self.options.clip
        if self.options.method == "sinq":
            return "sinq+rtn"
        return self.options.method if clip == "none" else f"{self.options.method}+clip-{clip}"

    def config(self, config):
        o = self.options
        config = json.loads(json.dumps(config))
        # The layout's fields only: these weights are round-to-nearest (with an optional clip
        # search), not GPTQ's Hessian-based solve, so no GPTQ-only setting (damping, true
        # sequential, static groups) is claimed; "meta" says what made them.
        config["quantization_config"] = {
            "quant_method": "gptq",
            "bits": o.bits,
            "group_size": o.group_size,
            "desc_act": False,
            "sym": self.sym,
            "checkpoint_format": self.checkpoint_format,
            "lm_head": False,
            "meta": {"quantizer": [f"nbwoq:{__version__}"], "method": self.method()},
        }
        config["torch_dtype"] = config["dtype"] = "float16"
        return config
