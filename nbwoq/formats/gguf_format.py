"""GGUF export (Q4_0, Q4_1, Q8_0) for llama.cpp and transformers' GGUF loader.

GGUF blocks hold 32 values with a float16 scale, so only ``--group-size 32`` maps onto
them; anything else is refused rather than re-grouped. The mapping:

=====  =========================  ==========================================
type   nbwoq settings             stored
=====  =========================  ==========================================
Q4_0   int4 sym (full range or    ``d = scale``, ``q = code + 8``
       not)
Q4_1   int4 asym                  ``d = scale``, ``m = -zp * d``, ``q = code``
Q8_0   int8 sym                   ``d = scale``, ``q = code``
=====  =========================  ==========================================

Scales are rounded to float16 and the codes are decided again with the rounded scale
(``quant_weight_w_scale``), so the file decodes to its own fake-quant; the report's error
is that of the file.

From a GGUF source the metadata records (tokenizer included) are copied byte for byte
into a header written by ``gguf_header``, and tensors keep their names. From a Hugging
Face folder (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3:
``hf_to_gguf.CONVERSIONS``) the names are mapped to GGUF's, the query and key rows are
permuted to llama.cpp's rotary layout where the family needs it, values are changed
where llama.cpp changes them (Gemma's norms), the metadata is written from
``config.json`` and the tokenizer files (``tokenizer.model``, ``tokenizer.json`` and their
side files) into a header written by gguf-py's ``GGUFWriter``, and tensors llama.cpp adds
(Llama 3's ``rope_freqs.weight``) follow the source's.
"""

import fnmatch
import json
import math
import os

import numpy as np

from nbwoq._validate import NonFiniteError
from nbwoq._version import __version__
from nbwoq.formats import ggml_blocks, gguf_check, gguf_header, hf_to_gguf, packing, quantizer, storage
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.gguf_mix import FILE_TYPES, plan_types
from nbwoq.formats.writer import Encoding, FileWriter
from nbwoq.quantize import quant_weight_w_scale

_KINDS = {"Q4_0": packing.Q4_0, "Q4_1": packing.Q4_1, "Q8_0": packing.Q8_0}
_FILE_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # llama_ftype MOSTLY_*


def gguf_type(options):
    """The GGUF block type for these settings, or ``InputError`` saying what fits."""
    o = options
    if o.group_size != 32:
        raise InputError(f"--format gguf stores blocks of 32 values: use --group-size 32 (got {o.group_size})")
    if o.codebook:
        raise InputError(f"--format gguf has no {o.dtype} blocks: use --dtype int")
    if o.bits == 4 and o.scheme == "sym":
        return "Q4_0"
    if o.bits == 4 and o.scheme == "asym":
        return "Q4_1"
    if o.bits == 8 and o.scheme == "sym":
        return "Q8_0"
    raise InputError(f"--format gguf writes int4 sym (Q4_0), int4 asym (Q4_1) or int8 sym (Q8_0); "
                     f"got int{o.bits} {o.scheme}")


_FLOATS = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(np.uint16)}


def _to_float_type(x, target, out):
    """Store float32 rows ``x`` as ``target`` into ``out``; returns the stored values
    widened back to float64 (bfloat16 rounded to nearest even, as llama.cpp does)."""
    if target == "F32":
        out[...] = x
        return x.astype(np.float64)
    if target == "F16":
        with np.errstate(over="ignore"):  # past 65504: Inf, refused by quantizer.stored_error
            out[...] = x.astype(np.float16)
        return out.astype(np.float64)
    bits = x.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out[...] = rounded.astype(np.uint16)
    return (out.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def _search(x, target, raw, weighted):
    """``--method search``: improve the reference's blocks ``raw`` of rows ``x`` in place;
    adds their weighted errors and norm to ``weighted`` and returns the rows' squared errors."""
    e = ggml_blocks.search_rows(x, target, raw)
    for i, part in enumerate((e.reference, e.search, e.weighted_norm)):
        weighted[i] += float(part.sum())
    return e.squared


class GgufWriter(FileWriter):
    """Plans and writes one GGUF file."""

    def __init__(self, options, source):
        super().__init__(options, source)
        # gguf-py writes a Hugging Face source's header; a GGUF source's is ours
        # (``gguf_header``), and its run does without importing gguf-py.
        self.gguf = None
        if source.kind != "gguf":
            try:
                import gguf
            except ImportError:  # pragma: no cover
                raise InputError("--format gguf needs the 'gguf' package (pip install gguf)") from None
            self.gguf = gguf
        self.file_type = options.gguf_type  # a llama.cpp file type (--type), or None: the core's codes
        if self.file_type is None:
            self.type_name = gguf_type(options)
            self.kind = _KINDS[self.type_name]
            self.qtype = gguf_check.ggml_type_id(self.type_name)
        else:
            self.type_name = self.file_type
        # A Hugging Face folder is converted (names, row order, metadata); a GGUF is kept as it is.
        self.convert = None if source.kind == "gguf" else hf_to_gguf.conversion(source, self.gguf)
        self.arch = source.gguf.architecture if self.convert is None else self.convert.arch
        self.types = self._plan_types() if self.file_type is not None else None

    def _plan_types(self):
        """Every tensor's GGML type under ``--type`` (``gguf_mix``), by its GGUF name."""
        tensors = [(self.out_name(info), info.shape) for _, infos in self.source.shards for info in infos]
        if self.source.kind == "gguf":
            layers = self._int_field(f"{self.arch}.block_count", 1)
            experts = self._int_field(f"{self.arch}.expert_count", 1)
            heads = self._int_field(f"{self.arch}.attention.head_count", 1)
            kv_heads = self._int_field(f"{self.arch}.attention.head_count_kv", heads)
        else:
            layers, heads, kv_heads, experts = self.convert.counts()
        return plan_types(tensors, self.file_type, self.arch, max(layers, 1), max(experts, 1),
                          max(heads, 1) // max(kv_heads, 1), pure=self.options.pure)

    def _int_field(self, key, default):
        """An integer key of the source's metadata (a per-layer array or anything else: ``default``)."""
        record = self.source.gguf.keys.get(key)
        value = None if record is None else record.value  # None for an array
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default

    def stored_as(self, info, label):
        if self.types is None:
            return label
        return self.types.get(self.out_name(info)) or label

    def select(self, info, chosen):
        """Under ``--type``, llama.cpp's rules pick the tensors; one already stored in its
        target type is copied byte for byte."""
        if self.types is None:
            return chosen
        target = self.types.get(self.out_name(info))
        if target is None or any(fnmatch.fnmatchcase(info.name, p) for p in self.options.exclude):
            return False
        return target != info.dtype

    # -- planning -----------------------------------------------------------------
    def out_name(self, info):
        return info.name if self.convert is None else self.convert.out_name(info)

    def check_tensor(self, info, selected):
        if self.types is not None:
            return  # the plan fell back to a type whose blocks fit every row
        if selected and info.shape[1] % 32:
            raise InputError(f"--format gguf: tensor {info.name!r} has {info.shape[1]} columns, "
                             "not a multiple of the 32-value block; exclude it with --exclude")

    def permutation(self, info):
        """Row order of tensor ``info`` in the file (None: as stored)."""
        return None if self.convert is None else self.convert.permutation(info)

    def tensor_info(self, gguf_writer, info, selected):
        """Register tensor ``info`` with the gguf-py writer (shape and type, no data)."""
        name = self.out_name(info)
        gguf = self.gguf
        if selected and self.types is not None:
            target = self.types[name]
            if target in _FLOATS:
                dtype = _FLOATS[target]
                gguf_writer.add_tensor_info(name, info.shape, dtype, info.size * dtype.itemsize,
                                            raw_dtype=gguf.GGMLQuantizationType.BF16 if target == "BF16" else None)
            else:
                byte_shape = (*info.shape[:-1], ggml_blocks.row_bytes(target, info.shape[-1]))
                gguf_writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                            raw_dtype=gguf.GGMLQuantizationType[target])
            return
        if selected:
            rows, cols = info.shape
            _, bsize = packing.GGUF_BLOCK[self.kind]
            byte_shape = (rows, cols // 32 * bsize)
            gguf_writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), rows * byte_shape[1],
                                        raw_dtype=gguf.GGMLQuantizationType(self.qtype))
            return
        itemsize = 2 if info.dtype in ("F16", "BF16") else 4
        nbytes = info.size * itemsize
        if self.convert.copy_dtype(info) == "F32" and info.dtype != "F32":
            # llama.cpp keeps norms and biases in float32 (its converter widens them too).
            gguf_writer.add_tensor_info(name, info.shape, np.dtype(np.float32), info.size * 4)
        elif info.dtype == "F32":
            gguf_writer.add_tensor_info(name, info.shape, np.dtype(np.float32), nbytes)
        elif info.dtype == "F16":
            gguf_writer.add_tensor_info(name, info.shape, np.dtype(np.float16), nbytes)
        elif info.dtype == "BF16":
            gguf_writer.add_tensor_info(name, info.shape, np.dtype(np.uint16), nbytes, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            raise InputError(f"--format gguf cannot store tensor {info.name!r} of dtype {info.dtype}")

    def _own_keys(self):
        """The key/values nbwoq sets itself: (key, GGUF value type name, value)."""
        return (("general.file_type", "UINT32",
                 FILE_TYPES[self.file_type][0] if self.file_type else _FILE_TYPE[self.type_name]),
                ("general.quantization_version", "UINT32", gguf_check.QUANT_VERSION),
                ("general.quantized_by", "STRING", f"nbwoq {__version__} ({self.options.label()})"))

    def metadata(self, gguf_writer):
        """Key/values of a Hugging Face source: written from config.json (+ tokenizer)."""
        self.convert.metadata(gguf_writer)
        for key, vtype, value in self._own_keys():
            gguf_writer.add_key_value(key, value, self.gguf.GGUFValueType[vtype])

    def _stored(self, info, selected):
        """``(ggml type name, data bytes)`` of tensor ``info`` in the file."""
        rows, cols = (math.prod(info.shape[:-1]), info.shape[-1]) if info.shape else (1, 1)
        if selected and self.types is not None:
            target = self.types[self.out_name(info)]
            if target in _FLOATS:
                return target, info.size * _FLOATS[target].itemsize
            return target, rows * ggml_blocks.row_bytes(target, cols)
        if selected:
            return self.type_name, rows * (cols // 32 * packing.GGUF_BLOCK[self.kind][1])
        return info.dtype, info.nbytes

    def _gguf_source_header(self, plan):
        """A GGUF source's header: its metadata records copied byte for byte, less the
        keys nbwoq sets (appended, encoded here), and the tensor infos of ``plan``."""
        own = self._own_keys()
        encode = {"UINT32": gguf_header.uint32_record, "STRING": gguf_header.string_record}
        skip = {key for key, _, _ in own}
        records = [raw for key, raw in self.source.gguf_records().items()
                   if key not in skip and not key.startswith("GGUF.")]  # GGUF.*: gguf-py's own names
        records += [encode[vtype](key, value) for key, vtype, value in own]
        tensors = []
        for info, selected in plan:
            type_name, nbytes = self._stored(info, selected)
            tensors.append((self.out_name(info), info.shape, gguf_check.ggml_type_id(type_name), nbytes))
        alignment = self.source.gguf.alignment
        return gguf_header.header(records, tensors, alignment), alignment

    def header(self, plan, scratch_path):
        """The header for ``plan`` (key/values and tensor infos), padded to the data
        alignment, and that alignment. A GGUF source's is written by ``gguf_header``;
        a Hugging Face source's by gguf-py, into ``scratch_path``."""
        if self.source.kind == "gguf":
            return self._gguf_source_header(plan)
        gw = self.gguf.GGUFWriter(scratch_path, self.arch)
        try:
            for info, selected in plan:
                self.tensor_info(gw, info, selected)
            for name, array in self.extra_tensors():
                gw.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
            self.metadata(gw)
            gw.write_header_to_file()
            gw.write_kv_data_to_file()
            gw.write_ti_data_to_file()
            alignment = gw.data_alignment
            gw.close()
            with open(scratch_path, "rb") as f:
                header = f.read()
        finally:
            gw.close()
            if os.path.exists(scratch_path):
                os.remove(scratch_path)
        return header + bytes(-len(header) % alignment), alignment

    def extra_tensors(self):
        return [] if self.convert is None else self.convert.extra_tensors()

    # -- encoding -----------------------------------------------------------------
    def copy(self, info, array, dtype_name):
        name = self.out_name(info)
        if self.source.kind == "gguf":
            return [(name, self.source.gguf_raw(info)[0])]
        values = self.convert.values(info, array, dtype_name)
        if values is not None:  # widened (1-D norms and biases) or changed by the conversion
            return [(name, values)]
        out = np.ascontiguousarray(array)
        perm = self.permutation(info)
        return [(name, out[perm] if perm is not None else out)]

    def one_pass(self):
        return self.types is not None

    def takes_blocks(self, info, selected):
        """A GGUF source's block-quantized tensor goes to a block type re-encoded row by row
        from its blocks (``ggml_blocks.requant_batch``): no float32 copy of the tensor.
        ``--method search`` starts from the reference's blocks of the whole tensor's values
        (``quantize_encode``)."""
        if not (selected and self.types is not None and self.source.kind == "gguf" and info.size > 0
                and len(info.shape) > 0 and info.dtype in ggml_blocks.SUPPORTED):
            return False
        target = self.types[self.out_name(info)]
        return target not in _FLOATS and not (self.options.method == "search" and ggml_blocks.searched(target))

    def copies_raw(self, info):
        return self.source.kind == "gguf"

    def requantize(self, infos, data, base, scratch):
        """Re-encode the tensors ``infos`` (each ``takes_blocks``) in one kernel call, from
        ``data``: the source's bytes from file offset ``base`` on. Returns per tensor
        ``(outputs, err_sum, norm_sum)``; the outputs are ``scratch``'s ``"batch"`` buffer.
        A row that decodes to NaN or Inf raises ``InputError`` naming the tensor and row."""
        items, size = [], 0
        for info in infos:
            rows, cols = math.prod(info.shape[:-1]), info.shape[-1]
            target = self.types[self.out_name(info)]
            items.append((info.start - base, rows, cols, info.dtype, target))
            size += rows * ggml_blocks.row_bytes(target, cols)
        results, bad = ggml_blocks.requant_batch(data, items, iq4_nl_search=True,
                                                 out=scratch.get("batch", (size,), np.uint8))
        if bad is not None:
            raise quantizer.non_finite_error(infos[bad[0]].name, bad[1])
        return [([(self.out_name(info), raw.reshape(*info.shape[:-1], raw.shape[-1]))], float(err.sum()),
                 float(norm.sum())) for info, (raw, err, norm) in zip(infos, results)]

    def quantize_encode(self, info, array, dtype_name, scratch):
        """Under ``--type``: the tensor's GGML type, encoded by llama.cpp's data-free rule
        (``ggml_blocks``) from the stored values in one pass; or a float type. (A GGUF
        source's block tensors go through ``requantize`` instead.)"""
        name = self.out_name(info)
        target = self.types[name]
        cols = info.shape[-1]
        values = array.reshape(-1, cols)
        n = values.shape[0]
        weighted = None
        if target in _FLOATS or (self.options.method == "search" and ggml_blocks.searched(target)):
            out, err, norm, weighted = self._encode_in_blocks(info, values, dtype_name, target, scratch)
        else:
            # Widened, checked, encoded and measured a row at a time: no float32 copy.
            out = scratch.get("blocks", (n, ggml_blocks.row_bytes(target, cols)), np.uint8)
            try:
                _, err, norm = ggml_blocks.encode_stored_rows(values, dtype_name, target, iq4_nl_search=True, out=out)
            except NonFiniteError as exc:
                raise quantizer.non_finite_error(info.name, exc.row) from None
        perm = self.permutation(info)
        if perm is not None:
            out = out[perm]
        outputs = [(name, out.reshape(*info.shape[:-1], out.shape[-1]))]
        if weighted is not None:  # the report's weighted errors: the reference's and the search's
            return outputs, float(err.sum()), float(norm.sum()), (*weighted, "reference")
        return outputs, float(err.sum()), float(norm.sum())

    def _encode_in_blocks(self, info, values, dtype_name, target, scratch):
        """A float ``target``, or ``--method search``, in blocks of rows of a float32
        working copy: ``(out, err, norm, weighted)`` (``weighted`` None but for a search)."""
        quantizer.clip_ratios(values, dtype_name, self.options, info.name)  # NaN/Inf: one error naming the row
        n, cols = values.shape
        if target in _FLOATS:
            out = np.empty((n, cols), dtype=_FLOATS[target])
        else:
            out = scratch.get("blocks", (n, ggml_blocks.row_bytes(target, cols)), np.uint8)
        err = np.zeros(n, dtype=np.float64)
        norm = np.zeros(n, dtype=np.float64)
        weighted = None if target in _FLOATS else [0.0, 0.0, 0.0]
        for start, stop in quantizer.row_blocks(n, cols):
            x = storage.widen(values[start:stop], dtype_name, out=scratch.get("work", (stop - start, cols), np.float32))
            if target in _FLOATS:
                stored = _to_float_type(x, target, out[start:stop])
                err[start:stop] = ((stored - x.astype(np.float64)) ** 2).sum(axis=1)
                norm[start:stop] = (x.astype(np.float64) ** 2).sum(axis=1)
                continue
            raw, _, nn = ggml_blocks.encode_rows(x, target, return_error=True, iq4_nl_search=True)
            out[start:stop], err[start:stop], norm[start:stop] = raw, _search(x, target, raw, weighted), nn
        return out, err, norm, weighted

    def begin(self, info, scratch):
        rows, cols = info.shape
        _, bsize = packing.GGUF_BLOCK[self.kind]
        return Encoding(info, dict(blocks=scratch.get("blocks", (rows, cols // 32 * bsize), np.uint8)))

    def encode_rows(self, enc, start, array, dtype_name, q):
        stop = start + array.shape[0]
        with np.errstate(over="ignore"):  # past 65504: Inf, refused by quantizer.stored_error
            scale16 = q.scale.astype(np.float16)
        # Decide the codes with the scale the file stores, so it decodes to its own fake-quant.
        work = storage.widen(array, dtype_name, out=q.codes)
        zp = q.zp if self.kind == packing.Q4_1 else None
        quant_weight_w_scale(work, scale16.astype(np.float32), zp, group_size=32, bits=self.options.bits)
        if self.kind == packing.Q4_1:
            with np.errstate(over="ignore", invalid="ignore"):  # Inf: refused by quantizer.stored_error
                m16 = (-q.zp * scale16.astype(np.float32)).astype(np.float16)
        else:
            m16 = np.broadcast_to(np.zeros((1, 1), dtype=np.float16), scale16.shape)
        packing.pack_gguf_rows(q.codes, storage.kernel_view(array, dtype_name), scale16.view(np.uint16),
                               np.ascontiguousarray(m16).view(np.uint16), self.kind, enc.arrays["blocks"][start:stop],
                               enc.err[start:stop], enc.norm[start:stop])

    def finish(self, enc):
        out = enc.arrays["blocks"]
        perm = self.permutation(enc.info)
        return [(self.out_name(enc.info), out[perm] if perm is not None else out)]
