"""Reading nbwoq's own format back, without torch: ``load`` and ``dequantize``."""

import json
import os

import numpy as np

from nbwoq.formats import packing
from nbwoq.formats import safetensors_io as st
from nbwoq._integer import int_range
from nbwoq._layout import group_layout
from nbwoq._tables import DTYPES, FLOAT_MAPPING, INT_MAPPING, SCHEMES
from nbwoq.formats.nbwoq_format import FORMAT_NAME, VERSION


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
    if codebook != "int":
        want_qmin, want_slot = -8, 4
    else:
        want_qmin, qmax, _ = int_range(bits, scheme == "sym", full_range)
        want_slot = packing.slot_bits(max(qmax - want_qmin, 1).bit_length())
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
    >>> from nbwoq.command.run import quantize_arrays
    >>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> quantize_arrays({"layers.0.fc.weight": w}, path, bits=4, group_size=16)
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
            if info.dtype == "BF16":
                array = (array.astype(np.uint32) << np.uint32(16)).view(np.float32)
            result[name] = array
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
