"""GGML block types: one table of their facts, and row-wise encode/decode for each.

The table (``BLOCK_TYPES``) says, for every block type nbwoq reads and writes, its GGML
type id, how many values a block holds and how many bytes it takes; the layouts are
spelled out beside the reference encoders (``_ggml_reference``). Encoding reproduces
llama.cpp's data-free ``quantize_row_*_ref`` routines byte for byte (no importance
matrix), in float32 and in llama.cpp's order of operations, built without FMA
contraction (the portable build); decoding is llama.cpp's ``dequantize_row_*``.

``encode_rows``, ``decode_rows``, ``requant_rows`` (blocks of one type re-encoded as
another, a row at a time) and ``encode_stored_rows`` (stored float16, bfloat16 or float32
rows widened and encoded a row at a time) validate their arguments and call the parallel
Numba kernels (``_ggml_rows``); ``_ggml_reference`` holds the slow, obvious twins the tests
compare them with. Nothing here imports ``gguf``: the test suite checks the
table against ``gguf.GGML_QUANT_SIZES``.
"""

from collections import namedtuple

import numpy as np

#: One GGML block type: its name, GGML type id, values per block and bytes per block.
BlockType = namedtuple("BlockType", "name type_id block_values block_bytes")

QK_K = 256  # values per K-quant super-block

BLOCK_TYPES = {
    t.name: t
    for t in (
        BlockType("Q4_0", 2, 32, 18),  # d, qs[16]
        BlockType("Q4_1", 3, 32, 20),  # d, m, qs[16]
        BlockType("Q5_0", 6, 32, 22),  # d, qh[4], qs[16]
        BlockType("Q5_1", 7, 32, 24),  # d, m, qh[4], qs[16]
        BlockType("Q8_0", 8, 32, 34),  # d, qs[32] (int8)
        BlockType("Q2_K", 10, QK_K, 84),  # scales[16], qs[64], d, dmin
        BlockType("Q3_K", 11, QK_K, 110),  # hmask[32], qs[64], scales[12], d
        BlockType("Q4_K", 12, QK_K, 144),  # d, dmin, scales[12], qs[128]
        BlockType("Q5_K", 13, QK_K, 176),  # d, dmin, scales[12], qh[32], qs[128]
        BlockType("Q6_K", 14, QK_K, 210),  # ql[128], qh[64], scales[16] (int8), d
        BlockType("IQ4_NL", 20, 32, 18),  # d, qs[16] (indices into KVALUES_IQ4NL)
        BlockType("IQ4_XS", 23, QK_K, 136),  # d, scales_h (uint16), scales_l[4], qs[128]
    )
}

#: The 16 levels of IQ4_NL and IQ4_XS (llama.cpp's ``kvalues_iq4nl``), sorted.
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


def _check_table():
    """Facts that follow from the layouts: raised at import when an entry is mistyped."""
    fp16 = 2
    expected = {
        "Q4_0": fp16 + 16, "Q4_1": 2 * fp16 + 16, "Q5_0": fp16 + 4 + 16, "Q5_1": 2 * fp16 + 4 + 16,
        "Q8_0": fp16 + 32, "Q2_K": 16 + 64 + 2 * fp16, "Q3_K": 32 + 64 + 12 + fp16,
        "Q4_K": 2 * fp16 + 12 + 128, "Q5_K": 2 * fp16 + 12 + 32 + 128, "Q6_K": 128 + 64 + 16 + fp16,
        "IQ4_NL": fp16 + 16, "IQ4_XS": fp16 + 2 + 4 + 128,
    }
    for name, t in BLOCK_TYPES.items():
        if t.block_bytes != expected[name] or t.block_values not in (32, QK_K):
            raise RuntimeError(f"ggml_blocks: inconsistent table entry {t}")
    if not np.all(np.diff(KVALUES_IQ4NL.astype(np.int32)) > 0):
        raise RuntimeError("ggml_blocks: KVALUES_IQ4NL must be strictly increasing")


_check_table()


def block_type(type_name):
    """The ``BlockType`` named ``type_name``, or ``ValueError`` listing the known ones."""
    t = BLOCK_TYPES.get(type_name) if isinstance(type_name, str) else None
    if t is None:
        raise ValueError(f"type_name must be one of {', '.join(BLOCK_TYPES)}; got {type_name!r}")
    return t


def row_bytes(type_name, cols):
    """Bytes of one row of ``cols`` values stored as ``type_name`` (``cols`` a multiple of
    the block size)."""
    t = block_type(type_name)
    _check_cols(cols, t)
    return cols // t.block_values * t.block_bytes


def _check_cols(cols, t):
    if not isinstance(cols, (int, np.integer)) or isinstance(cols, bool) or cols <= 0 or cols % t.block_values:
        raise ValueError(f"cols must be a positive multiple of {t.block_values} (the {t.name} block); got {cols!r}")


#: Kinds (``_ggml_encode.KIND``, table order) of the 32-value types; IQ4_NL's encoder is
#: not among the legacy ones (``requant_batch`` picks its kernel by these).
_LEGACY = [t.block_values == 32 for t in BLOCK_TYPES.values()]
_IQ4_NL = list(BLOCK_TYPES).index("IQ4_NL")

#: Block types ``encode_rows``/``decode_rows`` implement.
SUPPORTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")


def _supported(type_name):
    t = block_type(type_name)
    if t.name not in SUPPORTED:
        raise ValueError(f"type_name {type_name!r} is not implemented yet; use one of {', '.join(SUPPORTED)}")
    return t


def _check_matrix(a, name, dtype):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray)")


def encode_rows(values, type_name, *, return_error=False, iq4_nl_search=False):
    """Encode each row of ``values`` as GGML blocks of ``type_name``, as llama.cpp does.

    The bytes equal those of llama.cpp's data-free ``quantize_row_<type>_ref`` (no
    importance matrix), row by row, blocks in order along the row.

    Parameters
    ----------
    values : numpy.ndarray
        float32, shape (rows, cols), C-contiguous; ``cols`` a multiple of the block size
        (32, or 256 for K-quants and IQ4_XS). Every value finite.
    type_name : str
        One of ``SUPPORTED``.
    return_error : bool
        Also return, per row, the sum of squared error of the stored values (decoded as
        llama.cpp decodes them) and the sum of squared values (float64).
    iq4_nl_search : bool
        IQ4_NL only: search 15 trial scales per block as ``llama-quantize`` does without an
        importance matrix (``quantize_iq4_nl``) instead of ``quantize_row_iq4_nl_ref``'s
        single least-squares scale.

    Returns
    -------
    numpy.ndarray or tuple
        uint8 (rows, bytes per row); with ``return_error``, ``(raw, err, norm)``.

    Raises
    ------
    ValueError
        On a wrong array (type, dtype, shape, layout), an unknown type, or a row holding
        NaN or Inf (llama.cpp's bytes are undefined there).

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq.formats.ggml_blocks import encode_rows, decode_rows
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    >>> raw = encode_rows(x, "Q4_K")
    >>> raw.shape
    (1, 144)
    >>> float(np.abs(decode_rows(raw, "Q4_K", 256) - x).max()) < 0.07
    True
    """
    t = _supported(type_name)
    _check_matrix(values, "values", np.float32)
    rows, cols = values.shape
    _check_cols(cols, t)
    from nbwoq.formats import _ggml_encode, _ggml_rows

    out = np.empty((rows, cols // t.block_values * t.block_bytes), dtype=np.uint8)
    err = np.empty(rows, dtype=np.float64)
    norm = np.empty(rows, dtype=np.float64)
    bad = np.zeros(rows, dtype=np.bool_)
    ntry = 7 if iq4_nl_search else -1
    _ggml_rows.encode_blocks(values, _ggml_encode.KIND[t.name], ntry, out, err, norm, bad)
    if bad.any():
        raise ValueError(f"values: row {int(np.argmax(bad))} holds NaN or Inf; GGML blocks cannot store it")
    return (out, err, norm) if return_error else out


#: Stored float types ``encode_stored_rows`` widens: name -> the NumPy dtypes it takes for them.
STORED_FLOATS = {"F32": ("float32",), "F16": ("float16", "uint16", "int16"), "BF16": ("uint16", "int16", "bfloat16")}


def encode_stored_rows(values, dtype_name, type_name, *, iq4_nl_search=False, out=None):
    """``encode_rows(values widened to float32, type_name, return_error=True)`` from the
    values as a file stores them, a row at a time: no float32 copy of the tensor and no
    separate scan for NaN and Inf (each row is widened, checked, encoded and measured
    while it is in cache). The results equal the two-step form exactly.

    Parameters
    ----------
    values : numpy.ndarray
        (rows, cols), C-contiguous, native byte order: ``dtype_name`` ``"F32"`` as
        float32, ``"F16"`` as float16 (or its bit patterns, uint16 or int16), ``"BF16"``
        as bfloat16's bit patterns (uint16 or int16, or ml_dtypes' bfloat16).
    dtype_name : str
        ``"F32"``, ``"F16"`` or ``"BF16"``.
    type_name : str
        One of ``SUPPORTED``.
    iq4_nl_search : bool
        As ``encode_rows``.
    out : numpy.ndarray, optional
        uint8 (rows, bytes per row of ``type_name``), C-contiguous, to write into.

    Returns
    -------
    raw, err, norm
        As ``encode_rows(..., return_error=True)``; ``raw`` is ``out`` when given.

    Raises
    ------
    ValueError
        On a wrong array, dtype name, type or row width; ``nbwoq.NonFiniteError`` (a
        ``ValueError`` whose ``row`` is the first such row) when a row holds NaN or Inf.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq.formats.ggml_blocks import encode_rows, encode_stored_rows
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> raw, err, norm = encode_stored_rows(x.astype(np.float16), "F16", "Q4_0")
    >>> bool(np.array_equal(raw, encode_rows(x.astype(np.float16).astype(np.float32), "Q4_0")))
    True
    """
    t = _supported(type_name)
    if not isinstance(dtype_name, str) or dtype_name not in STORED_FLOATS:
        raise ValueError(f"dtype_name must be one of {', '.join(STORED_FLOATS)}; got {dtype_name!r}")
    if not isinstance(values, np.ndarray):
        raise ValueError(f"values must be a NumPy array, got {type(values).__name__}")
    if values.dtype.name not in STORED_FLOATS[dtype_name] or values.dtype.byteorder == ">":
        raise ValueError(f"values of {dtype_name} must be {' or '.join(STORED_FLOATS[dtype_name])} in native byte "
                         f"order, got {values.dtype.str}")
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (rows, columns), got shape {values.shape}")
    if not values.flags.c_contiguous:
        raise ValueError("values must be C-contiguous (np.ascontiguousarray)")
    rows, cols = values.shape
    _check_cols(cols, t)
    shape = (rows, cols // t.block_values * t.block_bytes)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    else:
        _check_matrix(out, "out", np.uint8)
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
    from nbwoq.formats import _ggml_encode, _ggml_rows

    err = np.empty(rows, dtype=np.float64)
    norm = np.empty(rows, dtype=np.float64)
    bad = np.zeros(rows, dtype=np.bool_)
    if rows:
        src = values.view(np.uint8)
        src.flags.writeable = False  # one compiled kernel for all: a file's map is read-only
        _ggml_rows.encode_stored_blocks(src, _ggml_rows.STORED[dtype_name], _ggml_encode.KIND[t.name],
                                        7 if iq4_nl_search else -1, out, err, norm, bad)
    if bad.any():
        from nbwoq._validate import NonFiniteError

        r = int(np.argmax(bad))
        raise NonFiniteError(f"values: row {r} holds NaN or Inf; GGML blocks cannot store it", r)
    return out, err, norm


def searched(type_name):
    """True when ``search_rows`` improves blocks of ``type_name``."""
    from nbwoq.formats import _ggml_search

    return type_name in _ggml_search.SEARCHED


#: What ``search_rows`` measured, per row (float64 arrays): the weighted squared error of
#: the reference's blocks and of the searched ones, the plain squared error of the searched
#: ones (of the values as llama.cpp decodes them), and the weighted squared norm.
SearchErrors = namedtuple("SearchErrors", "reference search squared weighted_norm")


def search_rows(values, type_name, raw):
    """Improve, in place, the blocks ``raw`` that ``encode_rows(values, type_name)`` wrote:
    nbwoq's search (``_ggml_search``), same bytes layout, never a higher weighted error
    per block than the reference's.

    Returns a ``SearchErrors``; None for the types without a search (not in
    ``_ggml_search.SEARCHED``), whose blocks are left as they are. The weights are the
    reference encoder's own: ``rms(sub-block) + |x|`` for Q4_K/Q5_K, ``x**2`` for Q6_K,
    ``sqrt(mean square of the row + x**2)`` for the legacy blocks of 32.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq.formats.ggml_blocks import encode_rows, search_rows
    >>> x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    >>> raw = encode_rows(x, "Q4_K")
    >>> e = search_rows(x, "Q4_K", raw)
    >>> bool(np.all(e.search <= e.reference))
    True
    """
    t = _supported(type_name)
    _check_matrix(values, "values", np.float32)
    _check_matrix(raw, "raw", np.uint8)
    rows, cols = values.shape
    _check_cols(cols, t)
    if raw.shape != (rows, cols // t.block_values * t.block_bytes):
        raise ValueError(f"raw must have shape {(rows, cols // t.block_values * t.block_bytes)}, got {raw.shape}")
    from nbwoq.formats import _ggml_search

    if t.name not in _ggml_search.SEARCHED:
        return None
    if not np.isfinite(values).all():
        raise ValueError("values: NaN or Inf; GGML blocks cannot store it")
    e = SearchErrors(*(np.empty(rows, dtype=np.float64) for _ in range(4)))
    _ggml_search.search_blocks(values, _ggml_search.KIND[t.name], _ggml_search.ROUNDS, _ggml_search.LEGACY_TRIALS,
                               raw, *e)
    return e


def decode_rows(raw, type_name, cols):
    """The float32 values (rows, cols) of GGML blocks ``raw`` (rows, bytes per row), as
    llama.cpp's ``dequantize_row_<type>`` computes them.

    Raises ``ValueError`` when ``raw`` is not a C-contiguous 2-D uint8 array of
    ``cols // block_values * block_bytes`` columns, or ``cols`` is not a positive multiple
    of the block size.
    """
    t = _supported(type_name)
    _check_matrix(raw, "raw", np.uint8)
    _check_cols(cols, t)
    want = cols // t.block_values * t.block_bytes
    if raw.shape[1] != want:
        raise ValueError(f"raw must have {want} bytes per row for {cols} {t.name} values, got {raw.shape[1]}")
    from nbwoq.formats import _ggml_encode, _ggml_rows

    out = np.empty((raw.shape[0], int(cols)), dtype=np.float32)
    _ggml_rows.decode_blocks(raw, _ggml_encode.KIND[t.name], out)
    return out


def requant_rows(raw, source_type, type_name, *, return_error=False, iq4_nl_search=False, out=None):
    """Re-encode GGML blocks: ``encode_rows(decode_rows(raw, source_type, cols), type_name)``
    in one pass, without the float32 copy of the whole tensor.

    Each row is decoded into a row buffer, checked, encoded and measured while it is in
    cache, so memory and time follow the bytes read and written. The result (and, with
    ``return_error``, the error sums) equals the two-step form exactly.

    Parameters
    ----------
    raw : numpy.ndarray
        uint8 (rows, bytes per row), C-contiguous: whole blocks of ``source_type``.
    source_type, type_name : str
        Block types of the source and of the result (each one of ``SUPPORTED``); the
        row's value count must be a multiple of ``type_name``'s block too.
    return_error, iq4_nl_search
        As ``encode_rows``.
    out : numpy.ndarray, optional
        uint8 (rows, bytes per row of ``type_name``), C-contiguous, to write into.

    Returns
    -------
    numpy.ndarray or tuple
        uint8 (rows, bytes per row); with ``return_error``, ``(raw, err, norm)``.

    Raises
    ------
    ValueError
        On a wrong array, type or row width; ``nbwoq.NonFiniteError`` (a ``ValueError``
        whose ``row`` is the first such row) when a row decodes to NaN or Inf.
    """
    src = _supported(source_type)
    _check_matrix(raw, "raw", np.uint8)
    if raw.shape[1] % src.block_bytes or raw.shape[1] == 0:
        raise ValueError(f"raw must have a positive multiple of {src.block_bytes} bytes per row (the {src.name} "
                         f"block), got {raw.shape[1]}")
    cols = raw.shape[1] // src.block_bytes * src.block_values
    rows = raw.shape[0]
    shape = (rows, row_bytes(type_name, cols))
    if out is not None:
        _check_matrix(out, "out", np.uint8)
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
    [(got, err, norm)], bad = requant_batch(raw.reshape(-1), [(0, rows, cols, src.name, type_name)],
                                            iq4_nl_search=iq4_nl_search,
                                            out=None if out is None else out.reshape(-1))
    if bad is not None:
        from nbwoq._validate import NonFiniteError

        raise NonFiniteError(f"raw: row {bad[1]} decodes to NaN or Inf; GGML blocks cannot store it", bad[1])
    got = out if out is not None else got
    return (got, err, norm) if return_error else got


def requant_batch(data, items, *, iq4_nl_search=False, out=None):
    """``requant_rows`` of several tensors in one kernel call: one launch and one split of
    the work over the threads for the whole batch.

    Parameters
    ----------
    data : numpy.ndarray
        uint8, 1-D, C-contiguous: bytes holding every tensor of the batch.
    items : list of tuple
        ``(start, rows, cols, source_type, type_name)`` per tensor: its rows of ``cols``
        values, blocks of ``source_type``, from ``data[start]`` on.
    iq4_nl_search : bool
        As ``encode_rows``.
    out : numpy.ndarray, optional
        uint8, 1-D, C-contiguous, at least the results' bytes, to write into.

    Returns
    -------
    results, bad
        ``results``: per item ``(raw, err, norm)``, ``raw`` its uint8 (rows, bytes per
        row) in ``out`` (one after the other); ``bad``: None, or ``(k, row)`` of the first
        item whose rows decode to NaN or Inf and the first such row (those rows are zeros).

    Raises
    ------
    ValueError
        On a wrong array, type, row width, or an item outside ``data``.
    """
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous:
        raise ValueError("data must be a 1-D C-contiguous uint8 array")
    from nbwoq.formats import _ggml_encode, _ggml_rows

    n = len(items)
    first_row = np.zeros(n + 1, dtype=np.int64)
    table = np.zeros((6, n), dtype=np.int64)  # start, source kind, cols, kind, out start, out bytes per row
    total = 0
    for k, (start, rows, cols, source_type, type_name) in enumerate(items):
        src, t = _supported(source_type), _supported(type_name)
        _check_cols(cols, src)
        _check_cols(cols, t)
        in_row, out_row = cols // src.block_values * src.block_bytes, cols // t.block_values * t.block_bytes
        if not (isinstance(start, (int, np.integer)) and isinstance(rows, (int, np.integer))
                and start >= 0 and rows >= 0 and start + rows * in_row <= data.size):
            raise ValueError(f"item {k}: {rows} rows of {in_row} bytes from byte {start} lie outside data "
                             f"({data.size} bytes)")
        first_row[k + 1] = first_row[k] + rows
        table[:, k] = (start, _ggml_encode.KIND[src.name], cols, _ggml_encode.KIND[t.name], total, out_row)
        total += rows * out_row
    if out is None:
        out = np.empty(total, dtype=np.uint8)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 1 and out.flags.c_contiguous
              and out.size >= total):
        raise ValueError(f"out must be a 1-D C-contiguous uint8 array of at least {total} bytes")
    rows = int(first_row[-1])
    err = np.empty(rows, dtype=np.float64)
    norm = np.empty(rows, dtype=np.float64)
    bad = np.zeros(rows, dtype=np.bool_)
    if rows and all(_LEGACY[k] for k in table[1]) and all(_LEGACY[k] and k != _IQ4_NL for k in table[3]):
        _ggml_rows.requant_legacy_blocks(data, first_row, table[0], table[1], table[2], table[3], table[4],
                                         out, err, norm, bad)
    elif rows:
        _ggml_rows.requant_blocks(data, first_row, table[0], table[1], table[2], table[3], table[4],
                                  7 if iq4_nl_search else -1, out, err, norm, bad)
    results = []
    for k in range(n):
        r0, r1 = first_row[k], first_row[k + 1]
        at = table[4, k]
        raw = out[at:at + (r1 - r0) * table[5, k]].reshape(r1 - r0, table[5, k])
        results.append((raw, err[r0:r1], norm[r0:r1]))
    first = None
    if bad.any():
        r = int(np.argmax(bad))
        k = int(np.searchsorted(first_row, r, side="right")) - 1
        first = (k, r - int(first_row[k]))
    return results, first
