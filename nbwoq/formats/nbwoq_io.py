"""nbwoq's own format from Python, without torch: ``save``, ``load`` and ``dequantize``."""

import fnmatch
import json
import os
import tempfile

import numpy as np

from nbwoq._layout import group_layout
from nbwoq._tables import DTYPES, FLOAT_MAPPING, INT_MAPPING, SCHEMES
from nbwoq.formats import packing, quantizer, storage
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.nbwoq_format import FORMAT_NAME, VERSION, NbwoqWriter, tensor_meta
from nbwoq.formats.options import QuantOptions
from nbwoq.formats.writer import encode_tensor


class QuantizedTensor:
    """A quantized weight as stored: packed codes, scales, zero points and their layout.

    Attributes
    ----------
    codes : numpy.ndarray of uint8, shape (rows, bytes per row)
    scales : numpy.ndarray of float32, shape (rows, n_groups)
    zeros : numpy.ndarray or None
        Integer zero points (rows, n_groups) of asymmetric integer groups.
    shape : tuple of int
    meta : dict
        ``bits``, ``slot``, ``group_size``, ``scheme``, ``codebook``, ``qmin``,
        ``full_range`` and the source ``dtype``.
    """

    def __init__(self, codes, scales, zeros, meta):
        self.codes, self.scales, self.zeros, self.meta = codes, scales, zeros, meta
        try:
            self.shape = tuple(meta["shape"])
        except (KeyError, TypeError):
            raise ValueError(f"meta must hold the tensor's shape, got {meta!r}") from None

    def __repr__(self):
        m = self.meta
        kind = m["codebook"] if m["codebook"] != "int" else f"int{m['bits']} {m['scheme']}"
        return f"QuantizedTensor(shape={self.shape}, {kind}, group_size={m['group_size']})"


def _check(tensor):
    """Raise ``ValueError`` unless ``tensor``'s metadata and parts agree. The decoding
    kernel indexes without bounds checks: a corrupt layout must never reach it."""
    m, codes, scales, zeros = tensor.meta, tensor.codes, tensor.scales, tensor.zeros
    try:
        rows, cols = (int(d) for d in m["shape"])
        codebook, scheme, group_size, slot, qmin = m["codebook"], m["scheme"], m["group_size"], m["slot"], m["qmin"]
        bits, full_range = m["bits"], m.get("full_range", False)
    except (KeyError, TypeError, ValueError):
        raise ValueError("metadata needs a 2-D shape, bits, slot, group_size, scheme, codebook and qmin") from None
    ints = (bits, slot, group_size, qmin)
    if rows < 0 or cols < 0 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) \
            or codebook not in DTYPES or scheme not in SCHEMES or not isinstance(full_range, bool) \
            or not 1 <= bits <= 16 or not (group_size == -1 or group_size > 0):
        raise ValueError(f"invalid metadata {m!r}")
    want_qmin, _, want_slot = packing.code_layout(bits, scheme, full_range, codebook != "int")
    if (qmin, slot) != (want_qmin, want_slot):
        raise ValueError(f"metadata gives qmin={qmin}, slot={slot}; {m!r} needs qmin={want_qmin}, slot={want_slot}")
    n_groups = group_layout(cols, group_size)[1]
    parts = [("codes", codes, (rows, packing.packed_cols(cols, slot)), ("uint8",)),
             ("scales", scales, (rows, n_groups), ("float32",))]
    if codebook == "int" and scheme == "asym":
        parts.append(("zeros", zeros, (rows, n_groups), ("uint8", "uint16")))
    for name, part, shape, dtypes in parts:
        if not isinstance(part, np.ndarray) or part.shape != shape or part.dtype.name not in dtypes:
            got = f"{part.dtype.name} {part.shape}" if isinstance(part, np.ndarray) else type(part).__name__
            raise ValueError(f"{name} must be {' or '.join(dtypes)} of shape {shape} for {m!r}, got {got}")


def _files(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise ValueError(f"{path!r} holds no .safetensors file")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    return [path]


def _read(info):
    with st.TensorMap(info) as array:
        return np.array(array)


def load(path):
    """Read an nbwoq-format checkpoint (a folder of shards or one ``.safetensors`` file).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str -> QuantizedTensor or numpy.ndarray
        Quantized weights as ``QuantizedTensor`` (see ``dequantize``); every other tensor
        as stored, except bfloat16, which is widened to float32 (exactly).

    Raises
    ------
    ValueError
        When a file is not in nbwoq's format or is corrupt.

    Examples
    --------
    >>> import numpy as np, tempfile, os, nbwoq
    >>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> nbwoq.save({"layers.0.fc.weight": w}, path, bits=4, group_size=16)
    >>> qt = nbwoq.load(path)["layers.0.fc.weight"]
    >>> qt
    QuantizedTensor(shape=(2, 32), int4 asym, group_size=16)
    >>> ref = nbwoq.quant_tensor(w.copy(), bits=4, group_size=16)
    >>> bool((nbwoq.dequantize(qt) == ref).all())
    True
    """
    result = {}
    for file in _files(path):
        tensors, metadata = st.read_header(file)
        if metadata.get("format") != FORMAT_NAME:
            raise ValueError(f"{file}: not an nbwoq-format file (metadata format={metadata.get('format')!r})")
        if metadata.get("nbwoq.version") != VERSION:
            raise ValueError(f"{file}: nbwoq format version {metadata.get('nbwoq.version')!r}, this reader knows {VERSION!r}")
        quantized = json.loads(metadata.get("nbwoq.tensors", "{}"))
        if not isinstance(quantized, dict) or not all(isinstance(m, dict) for m in quantized.values()):
            raise ValueError(f"{file}: corrupt nbwoq.tensors metadata (expected an object of objects)")
        parts = set()
        for name, meta in quantized.items():
            try:
                codes = _read(tensors[name + ".codes"])
                scales = _read(tensors[name + ".scales"])
                zeros = _read(tensors[name + ".zeros"]) if name + ".zeros" in tensors else None
            except KeyError as exc:
                raise ValueError(f"{file}: quantized tensor {name!r} lacks its part {exc.args[0]!r}") from None
            parts.update(name + s for s in (".codes", ".scales", ".zeros"))
            try:
                tensor = QuantizedTensor(codes, scales, zeros, meta)
                _check(tensor)
            except ValueError as exc:
                raise ValueError(f"{file}: quantized tensor {name!r} is corrupt: {exc}") from None
            result[name] = tensor
        for name, info in tensors.items():
            if name in parts:
                continue
            array = _read(info)
            result[name] = storage.widen(array, "BF16") if info.dtype == "BF16" else array
    return result


def dequantize(tensor, dtype=np.float32):
    """The stored values of a ``QuantizedTensor`` (or of every tensor in a ``load`` result).

    Integer codes decode as ``(code - zero) * scale`` and codebook codes as
    ``level * scale``, in float32 and in the core's order, so a float32 source gives back
    exactly what ``quant_tensor`` returns for the same settings.

    Parameters
    ----------
    tensor : QuantizedTensor, numpy.ndarray or dict
        A dict (as returned by ``load``) is dequantized entry by entry; arrays pass through.
    dtype : NumPy dtype, default float32
        Result dtype (float16 rounds once at the end).

    Returns
    -------
    numpy.ndarray or dict

    Examples
    --------
    >>> import numpy as np, nbwoq
    >>> nbwoq.dequantize(np.ones(2, dtype=np.float32))
    array([1., 1.], dtype=float32)
    """
    if isinstance(tensor, dict):
        return {k: dequantize(v, dtype) for k, v in tensor.items()}
    if not isinstance(tensor, QuantizedTensor):
        return np.asarray(tensor)
    _check(tensor)
    m = tensor.meta
    rows, cols = tensor.shape
    size, n_groups = group_layout(cols, m["group_size"])
    out = np.empty((rows, cols), dtype=np.float32)
    codebook = m["codebook"] != "int"
    if codebook:
        lut = packing.codebook_lut(FLOAT_MAPPING[m["codebook"]], INT_MAPPING[m["codebook"]], m["qmin"], m["slot"])
    else:
        lut = np.zeros(1, dtype=np.float32)
    zeros = tensor.zeros.astype(np.float32) if tensor.zeros is not None else np.zeros((rows, max(n_groups, 1)), np.float32)
    if rows and cols:
        packing.unpack_rows(tensor.codes, tensor.scales, zeros, size, np.float32(m["qmin"]), m["slot"], lut, codebook, out)
    return out if np.dtype(dtype) == np.float32 else out.astype(dtype)


def save(tensors, path, bits=4, group_size=128, scheme="asym", dtype="int", full_range=False, quantize=None):
    """Quantize arrays into one nbwoq-format ``.safetensors`` file (read it with ``load``).

    The codes, scales and zero points are those of ``quant_tensor(..., return_int=True)``
    for the same settings, so ``dequantize(load(path)[name])`` equals ``quant_tensor`` of
    a float32 copy of the array.

    Parameters
    ----------
    tensors : dict of str -> numpy.ndarray or QuantizedTensor
        2-D float32, float16 or bfloat16 (ml_dtypes) arrays are quantized (see
        ``quantize``); other arrays are stored unchanged, and ``QuantizedTensor`` values
        (from ``load``) are stored as they are.
    path : str or os.PathLike
        The file; written to a fresh temporary beside it and renamed into place when
        complete, so a failure leaves no partial file (and an existing file untouched).
    bits, group_size, scheme, dtype, full_range
        As for ``quant_tensor``.
    quantize : iterable of str, optional
        Names or glob patterns of the arrays to quantize (default: every 2-D float array).

    Raises
    ------
    ValueError, TypeError
        Bad settings, a non-finite weight (naming the tensor), or an array that cannot be
        quantized or stored; raised before anything is written.

    Examples
    --------
    >>> import numpy as np, tempfile, os, nbwoq
    >>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> nbwoq.save({"fc.weight": w, "fc.bias": np.zeros(2, np.float32)}, path, bits=4, group_size=32)
    >>> sorted(nbwoq.load(path))
    ['fc.bias', 'fc.weight']
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    patterns = None if quantize is None else [quantize] if isinstance(quantize, str) else list(quantize)
    options = QuantOptions(bits, group_size, scheme, dtype, full_range, python_names=True)
    writer = NbwoqWriter(options, None)
    plan, quantized_meta = [], {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if isinstance(value, QuantizedTensor):
            _check(value)
            plan.append((name, value, None))
            quantized_meta[name] = dict(value.meta, shape=list(value.shape))
            continue
        array = np.asarray(value)
        dtype_name = storage.from_numpy(array.dtype)
        wanted = array.ndim == 2 and storage.BY_NAME[dtype_name].quantizable and array.size > 0
        if patterns is not None:
            wanted = any(fnmatch.fnmatchcase(name, p) for p in patterns)
            if wanted and not (array.ndim == 2 and storage.BY_NAME[dtype_name].quantizable):
                raise ValueError(f"tensor {name!r} ({array.dtype}, shape {array.shape}) cannot be quantized: "
                                 "2-D float32, float16 or bfloat16 expected")
        stored = np.ascontiguousarray(storage.stored_bytes(array))
        info = st.TensorInfo(name, None, dtype_name, array.shape, 0, stored.nbytes)
        plan.append((name, stored, (info, wanted)))
        if wanted:
            quantized_meta[name] = tensor_meta(info, options)
    specs = []
    for name, value, item in plan:
        specs += _parts_specs(name, value) if item is None else writer.specs(*item)
    metadata = {"format": FORMAT_NAME, "nbwoq.version": VERSION, "nbwoq.tensors": json.dumps(quantized_meta)}
    # Encode everything before the file exists: a bad tensor raises with nothing written.
    outputs = []
    work = quantizer.Scratch()
    for name, value, item in plan:
        if item is None:
            outputs += _parts(name, value)
        else:
            info, wanted = item
            outputs += encode_tensor(writer, info, value, info.dtype, wanted, work, quantizer.Scratch()).outputs
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        sw = st.StreamWriter(tmp, specs, metadata)
        try:
            for oname, array in outputs:
                sw.write(oname, array)
            sw.close()
        except BaseException:
            sw.abort()
            raise
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _parts(name, tensor):
    out = [(name + ".codes", tensor.codes), (name + ".scales", tensor.scales)]
    if tensor.zeros is not None:
        out.append((name + ".zeros", tensor.zeros))
    return out


def _parts_specs(name, tensor):
    return [(oname, storage.from_numpy(array.dtype), array.shape) for oname, array in _parts(name, tensor)]
