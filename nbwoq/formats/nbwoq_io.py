"""nbwoq's own format from Python, without torch: ``save``, ``load`` and ``dequantize``."""

import fnmatch
import json
import os
import tempfile

import numpy as np

from nbwoq._layout import group_layout
from nbwoq._tables import DTYPES, FLOAT_MAPPING, INT_MAPPING, SCHEMES
from nbwoq.formats import nbwoq_format, packing, quantizer, storage
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import printable
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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _known_dtype(name):
    """A source dtype name nbwoq writes: a safetensors dtype or a GGML type (GGUF sources)."""
    if not isinstance(name, str):
        return False
    if name in storage.DTYPES:
        return True
    try:
        import gguf
    except ImportError:  # pragma: no cover - gguf is a dependency
        return False
    return name in gguf.GGMLQuantizationType.__members__


def _layout(m):
    """Check the metadata ``m`` of one quantized tensor, value by value, and return
    ``(rows, cols, parts)``: ``parts`` maps each part suffix the scheme stores to its
    required shape and dtype names. Raises ``ValueError`` naming the bad value."""
    if not isinstance(m, dict):
        raise ValueError(f"metadata must be an object, got {type(m).__name__}")
    missing = [k for k in ("shape", "dtype", "bits", "slot", "group_size", "scheme", "codebook", "qmin") if k not in m]
    if missing:
        raise ValueError(f"metadata needs a 2-D shape, dtype, bits, slot, group_size, scheme, codebook and qmin; "
                         f"{', '.join(missing)} missing")
    shape = m["shape"]
    if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not all(_is_int(d) and 0 <= d < 1 << 63 for d in shape):
        raise ValueError(f"shape must be a list of two non-negative integers, got {shape!r}")
    for key in ("bits", "slot", "group_size", "qmin"):
        if not _is_int(m[key]):
            raise ValueError(f"{key} must be an integer, got {m[key]!r}")
    bits, group_size, full_range = m["bits"], m["group_size"], m.get("full_range", False)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be 1 to 16, got {bits}")
    if not (group_size == -1 or group_size > 0):
        raise ValueError(f"group_size must be -1 or a positive integer, got {group_size}")
    if m["codebook"] not in DTYPES or m["scheme"] not in SCHEMES:
        raise ValueError(f"unknown codebook {m['codebook']!r} or scheme {m['scheme']!r}")
    if not isinstance(full_range, bool):
        raise ValueError(f"full_range must be true or false, got {full_range!r}")
    if not _known_dtype(m["dtype"]):
        raise ValueError(f"unknown source dtype {m['dtype']!r}")
    codebook = m["codebook"] != "int"
    want_qmin, qmax, want_slot = packing.code_layout(bits, m["scheme"], full_range, codebook)
    if (m["qmin"], m["slot"]) != (want_qmin, want_slot):
        raise ValueError(f"metadata gives qmin={m['qmin']}, slot={m['slot']}; {m!r} needs qmin={want_qmin}, slot={want_slot}")
    rows, cols = shape
    n_groups = group_layout(cols, group_size)[1]
    parts = {".codes": ((rows, packing.packed_cols(cols, want_slot)), ("uint8",)),
             ".scales": ((rows, n_groups), ("float32",))}
    if not codebook and m["scheme"] == "asym":
        parts[".zeros"] = ((rows, n_groups), ("uint8", "uint16"))
    return rows, cols, parts


def _check(tensor):
    """Raise ``ValueError`` unless ``tensor``'s metadata and parts agree. The decoding
    kernel indexes without bounds checks: a corrupt layout must never reach it."""
    _, _, parts = _layout(tensor.meta)
    given = {".codes": tensor.codes, ".scales": tensor.scales, ".zeros": tensor.zeros}
    for suffix, part in given.items():
        name = suffix[1:]
        if suffix not in parts:
            if part is not None:  # a scheme without zero points: a stray part is corruption, not extra data
                raise ValueError(f"{name} given, but {tensor.meta!r} stores none")
            continue
        shape, dtypes = parts[suffix]
        if not isinstance(part, np.ndarray) or part.shape != shape or part.dtype.name not in dtypes:
            got = f"{part.dtype.name} {part.shape}" if isinstance(part, np.ndarray) else type(part).__name__
            raise ValueError(f"{name} must be {' or '.join(dtypes)} of shape {shape} for {tensor.meta!r}, got {got}")


def _files(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise ValueError(f"{path!r} holds no .safetensors file")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is neither a folder nor a regular file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        raise ValueError(f"{path}: a GGUF file, not nbwoq's format (safetensors); read it with gguf-py or "
                         "llama.cpp, or load it with transformers' GGUF loader")
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
    origin = {}  # name -> file, across the shards of a folder
    for file in _files(path):
        tensors, metadata = st.read_header(file)
        if metadata.get("format") != FORMAT_NAME:
            raise ValueError(f"{file}: not an nbwoq-format file (metadata format={metadata.get('format')!r})")
        if metadata.get("nbwoq.version") != VERSION:
            raise ValueError(f"{file}: nbwoq format version {metadata.get('nbwoq.version')!r}, this reader knows {VERSION!r}")
        quantized = st.strict_json(metadata.get("nbwoq.tensors", "{}"), f"{file}: corrupt nbwoq.tensors metadata:")
        if not isinstance(quantized, dict) or not all(isinstance(m, dict) for m in quantized.values()):
            raise ValueError(f"{file}: corrupt nbwoq.tensors metadata (expected an object of objects)")
        parts = set()
        found = {}
        for name, meta in quantized.items():
            shown = printable(name)
            # Every part checked against the header (shape, dtype, none missing, none
            # stray) before a byte of it is read.
            try:
                _, _, layout = _layout(meta)
            except ValueError as exc:
                raise ValueError(f"{file}: quantized tensor {shown} is corrupt: {exc}") from None
            if name in tensors:
                raise ValueError(f"{file}: {shown} is stored both quantized and as a plain tensor")
            for suffix in nbwoq_format.SUFFIXES:
                info = tensors.get(name + suffix)
                if suffix not in layout:
                    if info is not None:
                        raise ValueError(f"{file}: quantized tensor {shown} is corrupt: it has a stray part "
                                         f"{printable(name + suffix)}, which {meta!r} does not store")
                    continue
                if info is None:
                    raise ValueError(f"{file}: quantized tensor {shown} lacks its part {printable(name + suffix)}")
                shape, dtypes = layout[suffix]
                if info.shape != shape or info.dtype not in [storage.from_numpy(d) for d in dtypes]:
                    raise ValueError(f"{file}: quantized tensor {shown} is corrupt: {suffix[1:]} must be "
                                     f"{' or '.join(dtypes)} of shape {shape} for {meta!r}, got {info.dtype} {info.shape}")
                parts.add(name + suffix)
            found[name] = (meta, layout)
        for name, (meta, layout) in found.items():
            codes, scales = _read(tensors[name + ".codes"]), _read(tensors[name + ".scales"])
            zeros = _read(tensors[name + ".zeros"]) if ".zeros" in layout else None
            tensor = QuantizedTensor(codes, scales, zeros, meta)
            try:
                _check(tensor)
            except ValueError as exc:
                raise ValueError(f"{file}: quantized tensor {printable(name)} is corrupt: {exc}") from None
            result[name] = tensor
        for name, info in tensors.items():
            if name in parts:
                continue
            array = _read(info)
            result[name] = storage.widen(array, "BF16") if info.dtype == "BF16" else array
        for name in list(found) + [n for n in tensors if n not in parts]:
            if name in origin:
                raise ValueError(f"{file}: tensor {printable(name)} is also in {origin[name]}")
            origin[name] = file
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
    rows, cols = m["shape"]  # checked: the codes hold rows x cols codes (none when either is 0)
    size, n_groups = group_layout(cols, m["group_size"])
    out = np.empty((rows, cols), dtype=np.float32)
    if not (rows and cols):
        return out if np.dtype(dtype) == np.float32 else out.astype(dtype)
    codebook = m["codebook"] != "int"
    if codebook:
        lut = packing.codebook_lut(FLOAT_MAPPING[m["codebook"]], INT_MAPPING[m["codebook"]], m["qmin"], m["slot"])
    else:
        lut = np.zeros(1, dtype=np.float32)
    zeros = tensor.zeros.astype(np.float32) if tensor.zeros is not None else np.zeros((rows, max(n_groups, 1)), np.float32)
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
            quantized_meta[name] = dict(value.meta, shape=list(value.meta["shape"]))  # the checked shape
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
