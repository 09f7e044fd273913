"""The seed's quantization functions on NumPy and array-API arrays.

Each public function validates every argument, resolves the path once (Numba kernels
for NumPy arrays, the array-API reference for any other array) and quantizes in
place. Nothing is written before all checks have passed.
"""

from nbwoq import _dispatch_codebook, _dispatch_given_scale, _double_quant, _integer, _validate
from nbwoq._layout import group_layout
from nbwoq._tables import FLOAT_MAPPING

# Keyword arguments each function understands beyond its signature. Unknown keywords
# raise TypeError: the reference ignores them, which hides typos.
_COMMON_KWARGS = {"check_finite": True}
_ROWWISE_KWARGS = dict(_COMMON_KWARGS, double_quant=False)
# The 4-bit codebooks also take given scales, and "cast_int" (store the codes, then
# scale them as if they were levels: the reference's meaning).
_CODEBOOK_KWARGS = dict(_ROWWISE_KWARGS, scale=None, cast_int=False)
# quant_tensor's double quantization (SPEC deviation 3 for the scheme's default).
_DOUBLE_QUANT_KWARGS = {
    "double_quant_dtype": "int",
    "double_quant_bits": 8,
    "double_quant_scheme": "asym",
    "double_quant_group_size": 256,
    "double_quant_return_int": False,
}
_FLAGS = ("check_finite", "double_quant", "cast_int", "double_quant_return_int")


def _options(kwargs, accepted, func):
    return _validate.options(kwargs, accepted, func, _FLAGS)


def _int_args(weight, bits, group_size, scheme, quantile, return_int, full_range):
    """Validate the arguments of an integer quantization; ``scheme`` already is.
    Returns ``(xp, return_int, full_range, quantile)``."""
    xp = _validate.weight(weight)
    return_int = _validate.flag(return_int, "return_int")
    full_range = _validate.flag(full_range, "full_range")
    _validate.full_range_bits(bits, scheme == "sym", full_range)
    rows, cols = weight.shape
    _, n_groups = group_layout(cols, group_size)
    quantile = _validate.quantile(quantile, rows, n_groups, xp)
    return xp, return_int, full_range, quantile


def _int_call(weight, bits, group_size, scheme, quantile, return_int, full_range, options):
    """Shared body of every integer entry point. ``scheme`` is already validated."""
    xp, return_int, full_range, quantile = _int_args(weight, bits, group_size, scheme, quantile, return_int,
                                                     full_range)
    sym = scheme == "sym"
    keep = return_int or options.get("double_quant", False)
    scale, zp = _integer.quantize_int(
        weight, xp, bits, group_size, sym, full_range, quantile,
        store="unscaled" if keep else "scaled", keep_params=keep, check=options["check_finite"],
    )
    if keep:
        return weight, scale, (zp if not sym else None)
    return weight


def _codebook_call(weight, group_size, quantile, dtype, return_int, options, name="weight"):
    """Shared body of the codebook entry points (no double quantization across groups)."""
    xp = _validate.weight(weight, name)
    return_int = _validate.flag(return_int, "return_int")
    rows, cols = weight.shape
    _, n_groups = group_layout(cols, group_size)
    given = options["scale"]
    if given is not None:
        _validate.param_array(given, "scale", (rows, n_groups), xp)
    quantile = _validate.quantile(quantile, rows, n_groups, xp)
    keep = return_int or options["double_quant"]
    scale = _dispatch_codebook.quantize_codebook(
        weight, xp, dtype, group_size, quantile,
        values="codes" if (return_int or options["cast_int"]) else "levels",
        store="unscaled" if keep else "scaled", scale=given, keep_scale=keep, check=options["check_finite"],
    )
    if keep:
        return weight, (given if given is not None else scale), None
    return weight


def quantize_4bit(tensor, quantile=1.0, dtype="nf4", return_int=False, **kwargs):
    """Quantize each row of ``tensor`` to a 4-bit codebook (NF4 or FP4), in place.

    Per row, ``scale = max(|x|) * quantile / max(levels)``; each ``v = x / scale``
    takes the nearest level by midpoints (level 0 when ``v <= mid[0]``, level ``i``
    when ``mid[i-1] < v <= mid[i]``, the last when ``v > mid[-1]``; ties go to the lower
    level). An all-zero row gets scale 0 and the level 0.0, as in the reference.

    Parameters
    ----------
    tensor : array, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten.
    quantile : float or array, default 1.0
        Clip ratio in (0, 1], or one per row as an array of shape (rows, 1).
    dtype : {"nf4", "fp4", "fp4_e2m1_bnb", "fp4_e2m1"}, default "nf4"
        The codebook (``FLOAT_MAPPING``; "fp4" is "fp4_e2m1_bnb").
    return_int : bool, default False
        Store each level's code (``INT_MAPPING``) and return the scale too.
    **kwargs
        ``scale``: an array of shape (rows, 1) to use instead of the computed scales
        (``quantile`` is then unused; returned as given, never modified).
        ``cast_int`` (bool): store the codes instead of the levels, then scale them
        like levels unless ``return_int`` (the reference's meaning).
        ``double_quant`` (bool): keep the unscaled levels (or codes) and return the
        scale, like ``return_int``. ``check_finite`` (default True): refuse NaN/Inf
        before writing.

    Returns
    -------
    tensor or (tensor, scale, None)
        The same object that was passed; ``scale`` has shape (rows, 1) in the compute
        dtype (float64 for float64 tensors, else float32).

    Raises
    ------
    TypeError, ValueError
        For a bad argument (a ``dtype`` that is not a codebook included) or a
        non-finite tensor, before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import quantize_4bit
    >>> w = np.array([[-1.0, -0.1, 0.0, 0.5, 2.0]], dtype=np.float32)
    >>> quantize_4bit(w, return_int=True)
    (array([[ 2.,  6.,  0., -6., -1.]], dtype=float32), array([[2.]], dtype=float32), None)
    >>> quantize_4bit(np.array([[-1.0, -0.1, 0.0, 0.5, 2.0]], dtype=np.float32))
    array([[-1.0501461 , -0.18210007,  0.        ,  0.4922246 ,  2.        ]],
          dtype=float32)
    """
    options = _options(kwargs, _CODEBOOK_KWARGS, "quantize_4bit")
    dtype = _validate.dtype(dtype, allowed=tuple(FLOAT_MAPPING))
    return _codebook_call(tensor, -1, quantile, dtype, return_int, options, name="tensor")


def qdq_weight_asym(weight, bits=4, quantile=1.0, return_int=False, **kwargs):
    """Quantize each row of ``weight`` asymmetrically (one group per row), in place.

    ``wmin = min(row_min, 0) * quantile``, ``wmax = max(row_max, 0) * quantile``
    (an all-zero row uses -1 and 1), ``scale = (wmax - wmin) / (2**bits - 1)``,
    ``zp = round(-wmin / scale)``, ``q = clamp(round(w / scale) + zp, 0, 2**bits - 1)``.

    Parameters
    ----------
    weight : array, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten.
    bits : int, default 4
        1 to 16.
    quantile : float or array, default 1.0
        Clip ratio in (0, 1], or one per row as an array of shape (rows, 1).
    return_int : bool, default False
        Store the codes instead of the dequantized values and return the parameters.
    **kwargs
        ``check_finite`` (default True): refuse NaN/Inf before writing.
        ``double_quant``: like ``return_int`` (the reference keeps the scale for it).

    Returns
    -------
    weight or (weight, scale, zp)
        The same object that was passed; ``scale``/``zp`` have shape (rows, 1) and the
        compute dtype (float64 for float64 weights, else float32).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import qdq_weight_asym
    >>> w = np.array([[0.0, 0.5, 1.0, 1.5]], dtype=np.float32)
    >>> qdq_weight_asym(w, bits=2, return_int=True)
    (array([[0., 1., 2., 3.]], dtype=float32), array([[0.5]], dtype=float32), array([[-0.]], dtype=float32))
    """
    options = _options(kwargs, _ROWWISE_KWARGS, "qdq_weight_asym")
    bits = _validate.positive_bits(bits)
    return _int_call(weight, bits, -1, "asym", quantile, return_int, False, options)


def qdq_weight_sym(weight, bits=4, quantile=1.0, return_int=False, full_range=False, **kwargs):
    """Quantize each row of ``weight`` symmetrically (one group per row), in place.

    ``wmax = max(|row_max|, |row_min|) * quantile`` (0 becomes 1);
    ``scale = wmax / (2**(bits-1) - 1)``, or with ``full_range`` ``wmax / 2**(bits-1)``
    negated when ``|row_max| > |row_min|`` (so the largest magnitude lands on the
    code ``-2**(bits-1)``); ``q = clamp(round(w / scale), -2**(bits-1), 2**(bits-1) - 1)``.
    One bit uses codes {0, 1} and ``scale = wmax``, as the reference does.

    Parameters
    ----------
    weight : array, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten.
    bits : int, default 4
        1 to 16 (2 to 16 with ``full_range``).
    quantile : float or array, default 1.0
        Clip ratio in (0, 1], or one per row as an array of shape (rows, 1).
    return_int : bool, default False
        Store the codes instead of the dequantized values and return the scale.
    full_range : bool, default False
        Use the code ``-2**(bits-1)`` too.
    **kwargs
        ``check_finite`` (default True), ``double_quant`` (like ``return_int``).

    Returns
    -------
    weight or (weight, scale, None)
        The same object that was passed; ``scale`` has shape (rows, 1).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import qdq_weight_sym
    >>> w = np.array([[-1.0, -0.4, 0.2, 0.8]], dtype=np.float32)
    >>> qdq_weight_sym(w, bits=3, full_range=True, return_int=True)[0]
    array([[-4., -2.,  1.,  3.]], dtype=float32)
    """
    options = _options(kwargs, _ROWWISE_KWARGS, "qdq_weight_sym")
    bits = _validate.positive_bits(bits)
    return _int_call(weight, bits, -1, "sym", quantile, return_int, full_range, options)


def qdq_weight_actor(weight, bits, scheme, quantile=1.0, dtype="int", return_int=False, full_range=False, **kwargs):
    """Quantize each row of ``weight`` in place with the integer scheme or a 4-bit codebook.

    A ``dtype`` of the codebooks (``FLOAT_MAPPING``) goes to ``quantize_4bit`` and
    ignores ``bits``/``scheme``/``full_range``; ``"int"`` goes to ``qdq_weight_sym``
    or ``qdq_weight_asym`` by ``scheme``.

    Parameters
    ----------
    weight : array, shape (rows, cols)
    bits : int
        1 to 16.
    scheme : {"sym", "asym"}
    quantile, dtype, return_int, full_range, **kwargs
        As for ``quant_tensor``.

    Returns
    -------
    weight or (weight, scale, zp)

    Raises
    ------
    TypeError, ValueError
        For a bad argument (``bits <= 0`` included), before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import qdq_weight_actor
    >>> w = np.array([[0.0, 1.0, 2.0, 3.0]], dtype=np.float32)
    >>> qdq_weight_actor(w, 2, "asym", return_int=True)[0]
    array([[0., 1., 2., 3.]], dtype=float32)
    >>> qdq_weight_actor(np.array([[0.0, 1.0, 2.0, 3.0]], dtype=np.float32), 4, "sym", dtype="nf4",
    ...                  return_int=True)[0]
    array([[ 0., -5., -2., -1.]], dtype=float32)
    """
    bits = _validate.positive_bits(bits)
    scheme = _validate.scheme(scheme)
    dtype = _validate.dtype(dtype)
    if dtype in FLOAT_MAPPING:
        options = _options(kwargs, _CODEBOOK_KWARGS, "qdq_weight_actor")
        _validate.flag(full_range, "full_range")
        return _codebook_call(weight, -1, quantile, dtype, return_int, options)
    if scheme == "sym":
        return qdq_weight_sym(weight, bits, quantile, return_int, full_range, **kwargs)
    _options(kwargs, _ROWWISE_KWARGS, "qdq_weight_actor")
    _validate.flag(full_range, "full_range")  # asym ignores it, but a bad value is still refused
    return qdq_weight_asym(weight, bits, quantile, return_int, **kwargs)


_TENSOR_KWARGS = dict(_COMMON_KWARGS, double_quant=False, scale=None, cast_int=False, **_DOUBLE_QUANT_KWARGS)


def _double_quant_options(options):
    """Validate the ``double_quant_*`` keywords (always: a typo raises even without
    ``double_quant``)."""
    options["double_quant_dtype"] = _validate.dtype(options["double_quant_dtype"], "double_quant_dtype")
    options["double_quant_bits"] = _validate.positive_bits(options["double_quant_bits"], "double_quant_bits")
    options["double_quant_scheme"] = _validate.scheme(options["double_quant_scheme"], "double_quant_scheme")
    options["double_quant_group_size"] = _validate.group_size(options["double_quant_group_size"],
                                                              "double_quant_group_size")


def quant_tensor(weight, bits=4, group_size=-1, scheme="asym", quantile=1.0, dtype="int", return_int=False,
                 full_range=False, **kwargs):
    """Group-quantize ``weight`` in place and return the very same object.

    Groups run along the last axis: ``group_size`` consecutive columns share one scale
    (and zero point). ``-1`` or a size larger than the row means one group per row; a
    size that does not divide the row leaves a shorter last group.

    Parameters
    ----------
    weight : array, shape (rows, cols)
        float16, bfloat16, float32 or float64 (NumPy arrays take the Numba kernels;
        any other array-API array the reference path on its own device). Overwritten.
    bits : int, default 4
        1 to 16; ``bits <= 0`` returns ``weight`` untouched (the reference's meaning).
        Ignored by the codebooks.
    group_size : int, default -1
        -1 or a positive integer.
    scheme : {"asym", "sym"}, default "asym"
        Ignored by the codebooks.
    quantile : float or array, default 1.0
        Clip ratio in (0, 1], or one per group as an array of shape (rows, n_groups).
    dtype : {"int", "nf4", "fp4", "fp4_e2m1_bnb", "fp4_e2m1"}, default "int"
        Integer codes, or a 4-bit codebook (``quantize_4bit`` per group).
    return_int : bool, default False
        Store the integer codes (a codebook's ``INT_MAPPING`` codes) instead of the
        dequantized values and also return the scales (and zero points for asym).
    full_range : bool, default False
        Symmetric only: use the code ``-2**(bits-1)`` too (needs ``bits >= 2``).
    **kwargs
        ``check_finite`` (default True): scan for NaN/Inf first and raise naming the
        first bad row; ``False`` skips the scan (one read of the weight less).

        Codebooks only: ``scale``, an array (rows, n_groups) used instead of the
        computed scales; ``cast_int`` (bool), store codes and scale them like levels.

        ``double_quant`` (bool, default False): quantize the scales too (SPEC
        deviation 3). The scales, flattened row-major to one row, get their mean
        subtracted when ``double_quant_scheme`` is "asym" (the default) and are
        quantized by ``quant_tensor`` with ``double_quant_dtype`` (default "int"),
        ``double_quant_bits`` (8), ``double_quant_group_size`` (256) and scheme "sym";
        the mean is added back. The weight is then dequantized with those scales, or
        with ``return_int`` keeps its codes and ``(weight, scales, zp)`` carries the
        double-quantized scales. ``double_quant_return_int=True`` (needs
        ``return_int``) returns ``(weight, (scale_codes, hyper_scale, mean), zp)``
        instead: ``scale_codes`` (rows, n_groups), their own scales ``hyper_scale``
        (1, n_hyper_groups) and ``mean`` (a 0-d array, or None for scheme "sym");
        ``scales = dequant(scale_codes, hyper_scale) + mean``.

    Returns
    -------
    weight or (weight, scale, zp)
        ``weight`` is the object passed in. ``scale`` and ``zp`` have shape
        (rows, n_groups) in the compute dtype (float64 for float64 weights, else
        float32); ``zp`` is None for sym and the codebooks.

    Raises
    ------
    TypeError, ValueError
        For a bad argument or a non-finite weight, before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import quant_tensor
    >>> w = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    >>> out, scale, zp = quant_tensor(w, bits=2, group_size=2, return_int=True)
    >>> out is w, scale.shape
    (True, (2, 2))
    >>> w = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    >>> quant_tensor(w, group_size=2, dtype="nf4", return_int=True)[0]
    array([[ 7.,  1.,  7.,  4.],
           [-5., -1., -2., -1.]], dtype=float32)
    >>> w = np.linspace(-1, 1, 512, dtype=np.float32).reshape(4, 128)
    >>> _, (codes, hyper_scale, mean), _ = quant_tensor(w, group_size=32, scheme="sym", return_int=True,
    ...                                                 double_quant=True, double_quant_return_int=True)
    >>> codes.shape, hyper_scale.shape, mean.shape
    ((4, 4), (1, 1), ())
    """
    options = _options(kwargs, _TENSOR_KWARGS, "quant_tensor")
    bits = _validate.bits(bits)
    group_size = _validate.group_size(group_size)
    scheme = _validate.scheme(scheme)
    dtype = _validate.dtype(dtype)
    _double_quant_options(options)
    codebook = dtype in FLOAT_MAPPING
    if not codebook and (options["scale"] is not None or options["cast_int"]):
        raise TypeError("quant_tensor(): scale= and cast_int= apply to the 4-bit codebooks only, "
                        f"not dtype={dtype!r}")
    if options["double_quant"] and options["scale"] is not None:
        raise ValueError("quant_tensor(): double_quant quantizes the scales it computes; it cannot take scale=")
    if options["double_quant_return_int"] and options["double_quant"] and not _validate.flag(return_int,
                                                                                             "return_int"):
        raise ValueError("double_quant_return_int=True returns the scales' codes next to the weight's codes: "
                         "it needs return_int=True")
    if bits <= 0:
        _validate.weight(weight, writable=False)
        return weight
    if options["double_quant"]:
        if codebook:
            xp = _validate.weight(weight)
            return_int = _validate.flag(return_int, "return_int")
            _validate.flag(full_range, "full_range")
            rows, cols = weight.shape
            quantile = _validate.quantile(quantile, rows, group_layout(cols, group_size)[1], xp)
        else:
            xp, return_int, full_range, quantile = _int_args(weight, bits, group_size, scheme, quantile, return_int,
                                                             full_range)
        return _double_quant.quant_tensor_double(weight, xp, bits, group_size, scheme, quantile, dtype, return_int,
                                                 full_range, options["cast_int"], options, quant_tensor)
    if codebook:
        _validate.flag(full_range, "full_range")
        return _codebook_call(weight, group_size, quantile, dtype, return_int, options)
    return _int_call(weight, bits, group_size, scheme, quantile, return_int, full_range, options)


def quant_weight_w_scale(weight, scale, zp=None, group_size=-1, dtype="int", bits=None, *, check_finite=True):
    """Quantize ``weight`` with known scales (and zero points) into codes, in place.

    Integer dtype: ``code = round(w / scale + zp)`` (the zero point is added *before*
    rounding, the reference's formula), or ``round(w / scale)`` without ``zp``. A
    codebook: the codes ``quantize_4bit`` stores with the given scales. Groups as in
    ``quant_tensor`` (a shorter last group when ``group_size`` does not divide the row).

    SPEC deviation 2: with ``bits``, integer codes are clamped to ``[0, 2**bits - 1]``
    when ``zp`` is given, else to ``[-2**(bits-1), 2**(bits-1) - 1]``; without it they
    are not clamped (the reference's behaviour: the range is unknown, and it can emit
    16 for 4 bits). Codebook codes are always valid.

    Parameters
    ----------
    weight : array, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten with the codes.
    scale : array, shape (rows, n_groups)
        One scale per group, of the weight's kind (NumPy for NumPy weights), e.g. the
        scales ``quant_tensor(..., return_int=True)`` returned.
    zp : array, shape (rows, n_groups), optional
        Zero points (integer dtype only; None for sym and the codebooks).
    group_size : int, default -1
        -1 or a positive integer.
    dtype : {"int", "nf4", "fp4", "fp4_e2m1_bnb", "fp4_e2m1"}, default "int"
    bits : int, optional
        1 to 16: clamp integer codes to the format's range (see above).
    check_finite : bool, default True
        Refuse NaN/Inf weights before writing (``False`` skips the scan).

    Returns
    -------
    weight
        The same object, holding the codes (whole numbers in the weight's dtype).

    Raises
    ------
    TypeError, ValueError
        For a bad argument (a scale or zp of the wrong shape or kind, a ``zp`` with a
        codebook) or a non-finite weight, before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import quant_weight_w_scale
    >>> w = np.array([[0.0, 0.5, 1.0, 1.6]], dtype=np.float32)
    >>> quant_weight_w_scale(w.copy(), np.array([[0.1]], np.float32), np.array([[0.0]], np.float32))
    array([[ 0.,  5., 10., 16.]], dtype=float32)
    >>> quant_weight_w_scale(w.copy(), np.array([[0.1]], np.float32), np.array([[0.0]], np.float32), bits=4)
    array([[ 0.,  5., 10., 15.]], dtype=float32)
    >>> quant_weight_w_scale(w.copy(), np.array([[1.6]], np.float32), dtype="nf4")
    array([[ 0., -5., -3., -1.]], dtype=float32)
    """
    xp = _validate.weight(weight)
    group_size = _validate.group_size(group_size)
    dtype = _validate.dtype(dtype)
    check_finite = _validate.flag(check_finite, "check_finite")
    rows, cols = weight.shape
    _, n_groups = group_layout(cols, group_size)
    _validate.param_array(scale, "scale", (rows, n_groups), xp)
    codebook = dtype in FLOAT_MAPPING
    if zp is not None:
        if codebook:
            raise ValueError(f"zp must be None for dtype={dtype!r}: codebook codes have no zero point")
        _validate.param_array(zp, "zp", (rows, n_groups), xp, integers=True)
    if bits is not None:
        bits = _validate.bits(bits)
        if bits <= 0:
            raise ValueError(f"bits must be None or a positive integer, got {bits!r}")
    if codebook:
        _dispatch_codebook.quantize_codebook(weight, xp, dtype, group_size, 1.0, values="codes", store="unscaled",
                                             scale=scale, check=check_finite)
        return weight
    if check_finite:
        _validate.check_finite(weight, xp)
    qrange = None
    if bits is not None:
        qrange = (0, 2**bits - 1) if zp is not None else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    _dispatch_given_scale.quant_w_scale(weight, xp, group_size, scale, zp, qrange)
    return weight
