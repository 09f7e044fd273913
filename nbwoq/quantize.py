"""The seed's quantization functions on NumPy and array-API arrays.

Each public function validates every argument, resolves the path once (Numba kernels
for NumPy arrays, the array-API reference for any other array) and quantizes in
place. Nothing is written before all checks have passed.
"""

from nbwoq import _integer, _validate
from nbwoq._layout import group_layout

# Keyword arguments each function understands beyond its signature. Unknown keywords
# raise TypeError: the reference ignores them, which hides typos.
_COMMON_KWARGS = {"check_finite": True}
_ROWWISE_KWARGS = dict(_COMMON_KWARGS, double_quant=False)


def _options(kwargs, accepted, func):
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{func}() got unexpected keyword argument(s) {unknown}; accepted: {sorted(accepted)}")
    options = dict(accepted)
    options.update(kwargs)
    for key in ("check_finite", "double_quant"):
        if key in options:
            options[key] = _validate.flag(options[key], key)
    return options


def _int_call(weight, bits, group_size, scheme, quantile, return_int, full_range, options, func):
    """Shared body of every integer entry point. ``scheme`` is already validated."""
    xp = _validate.weight(weight)
    return_int = _validate.flag(return_int, "return_int")
    full_range = _validate.flag(full_range, "full_range")
    sym = scheme == "sym"
    if sym and full_range and bits == 1:
        raise ValueError("full_range needs bits >= 2 for scheme='sym' (1-bit full range has no finite scale)")
    rows, cols = weight.shape
    _, n_groups = group_layout(cols, group_size)
    quantile = _integer.quantile_argument(quantile, rows, n_groups, xp)
    keep = return_int or options.get("double_quant", False)
    scale, zp = _integer.quantize_int(
        weight, xp, bits, group_size, sym, full_range, quantile,
        write_codes=keep, keep_params=keep, check=options["check_finite"],
    )
    if keep:
        return weight, scale, (zp if not sym else None)
    return weight


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
    bits = _validate.bits(bits)
    if bits <= 0:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    return _int_call(weight, bits, -1, "asym", quantile, return_int, False, options, "qdq_weight_asym")


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
    bits = _validate.bits(bits)
    if bits <= 0:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    return _int_call(weight, bits, -1, "sym", quantile, return_int, full_range, options, "qdq_weight_sym")


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
    """
    bits = _validate.bits(bits)
    if bits <= 0:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    scheme = _validate.scheme(scheme)
    dtype = _validate.dtype(dtype, allowed=_INT_DTYPES)
    if scheme == "sym":
        return qdq_weight_sym(weight, bits, quantile, return_int, full_range, **kwargs)
    _options(kwargs, _ROWWISE_KWARGS, "qdq_weight_actor")
    return qdq_weight_asym(weight, bits, quantile, return_int, **kwargs)


_INT_DTYPES = ("int",)
_TENSOR_KWARGS = dict(_COMMON_KWARGS)


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
    group_size : int, default -1
        -1 or a positive integer.
    scheme : {"asym", "sym"}, default "asym"
    quantile : float or array, default 1.0
        Clip ratio in (0, 1], or one per group as an array of shape (rows, n_groups).
    dtype : str, default "int"
        ``"int"``.
    return_int : bool, default False
        Store the integer codes instead of the dequantized values and also return the
        scales (and zero points for asym).
    full_range : bool, default False
        Symmetric only: use the code ``-2**(bits-1)`` too (needs ``bits >= 2``).
    **kwargs
        ``check_finite`` (default True): scan for NaN/Inf first and raise naming the
        first bad row; ``False`` skips the scan (one read of the weight less).

    Returns
    -------
    weight or (weight, scale, zp)
        ``weight`` is the object passed in. ``scale`` and ``zp`` have shape
        (rows, n_groups) in the compute dtype (float64 for float64 weights, else
        float32); ``zp`` is None for sym.

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
    """
    options = _options(kwargs, _TENSOR_KWARGS, "quant_tensor")
    bits = _validate.bits(bits)
    group_size = _validate.group_size(group_size)
    scheme = _validate.scheme(scheme)
    dtype = _validate.dtype(dtype, allowed=_INT_DTYPES)
    if bits <= 0:
        _validate.weight(weight, writable=False)
        return weight
    return _int_call(weight, bits, group_size, scheme, quantile, return_int, full_range, options, "quant_tensor")
