"""Data-free accuracy for integer group quantization: ``refit_int``.

Round-to-nearest sets each group's scale (and zero point) from the group's min and max,
then rounds. ``refit_int`` keeps the format (integer codes, one scale and zero point per
group, nothing more stored) but chooses the scale and zero point that reproduce the
group best, weighting each element by its importance: the least-squares refit of
llama.cpp's ``make_qx_quants``/``make_qkx2_quants``, alternated with re-rounding. No
calibration data is needed. The Numba kernel is ``_kernels_refit``; any other array-API
array takes the reference twin ``_reference_refit`` on its own device.
"""

import numpy as np

from nbwoq import _arrays, _integer, _kernels_lanes, _kernels_refit, _reference_refit, _validate
from nbwoq._layout import group_layout

#: Fits per group at most (each costs one pass over the group while it is in cache; most
#: groups stop earlier, when a fit no longer lowers the error).
DEFAULT_ITERATIONS = 4
MAX_ITERATIONS = 64


def _weighting(weighting):
    """The kernel code of ``weighting`` (checked by ``_validate.weighting``, the one rule;
    ``refine_zero`` and ``dual_scale`` use this too)."""
    return _kernels_lanes.MAGNITUDE if _validate.weighting(weighting) else _kernels_lanes.UNIFORM


def _iterations(value):
    value = _validate.integer(value, "iterations")
    if not 0 <= value <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an integer from 0 to {MAX_ITERATIONS}, got {value!r}")
    return value


def refit_int(weight, bits=4, group_size=128, scheme="asym", full_range=False, *, weighting="magnitude",
              iterations=DEFAULT_ITERATIONS, quantile=1.0, return_int=True, check_finite=True):
    """Integer group quantization with least-squares refitted scales and zero points.

    Each group starts from round-to-nearest's scale and zero point (``quant_tensor``'s,
    for clip ratio ``quantile``) and then alternates two steps, each of which can only
    lower the group's weighted squared error ``sum(w * (x - (q - zp) * scale)**2)``:
    the scale (and for ``"asym"`` the integer zero point) that minimize it for the current
    codes, in closed form; and the nearest codes for that scale and zero point. A fit is
    kept only if its codes lower the error, so no group ends worse than its start. The
    result has exactly ``quant_tensor(..., return_int=True)``'s layout: the codes
    satisfy ``code = clamp(round(x / scale) + zp, qmin, qmax)`` for the returned
    parameters, so any writer of that layout can store them.

    Parameters
    ----------
    weight : array, shape (rows, cols)
        float16, bfloat16, float32 or float64 (NumPy arrays take the Numba kernel, any
        other array-API array the reference path on its own device). Overwritten with
        the codes (or with the fake-quantized values when ``return_int`` is False).
    bits : int, default 4
        1 to 16; ``bits <= 0`` returns ``weight`` untouched, as ``quant_tensor`` does.
    group_size : int, default 128
        -1 or a positive integer; groups as in ``quant_tensor``, tail group included.
    scheme : {"asym", "sym"}, default "asym"
        ``"asym"``: codes ``0 .. 2**bits - 1`` and an integer zero point in that range.
        ``"sym"``: no zero point.
    full_range : bool, default False
        Symmetric only: codes ``-2**(bits-1) .. 2**(bits-1) - 1`` (GGUF Q4_0's layout);
        needs ``bits >= 2``.
    weighting : {"magnitude", None}, default "magnitude"
        Importance of each element in the error: ``rms + |x|`` (``rms`` the root mean
        square of its group; llama.cpp's choice without an importance matrix, as in
        ``search_clip(weighting="magnitude")``), or ``None`` for the plain squared error.
    iterations : int, default 4
        At most this many fits per group (0 to 64); 0 gives round-to-nearest.
    quantile : float or array, default 1.0
        Clip ratio of the starting point, one for the tensor or one per group (shape
        (rows, n_groups), e.g. from ``search_clip(..., per_group=True)``).
    return_int : bool, default True
        Store the codes and return the parameters; False stores the fake-quantized
        values ``(code - zp) * scale`` and returns only ``weight``.
    check_finite : bool, default True
        Refuse NaN/Inf before writing (``ValueError`` naming the first bad row).

    Returns
    -------
    (weight, scale, zp) or weight
        With ``return_int``: ``weight`` (the same object) holding the codes as whole
        numbers, ``scale`` of shape (rows, n_groups) in the compute dtype (float64 for
        float64 weights, else float32) and ``zp`` likewise for ``"asym"``, ``None`` for
        ``"sym"``. Otherwise ``weight`` holding the fake-quantized values.

    Raises
    ------
    TypeError, ValueError
        For a bad argument or, with ``check_finite``, a weight holding NaN or Inf;
        raised before anything is written.

    Examples
    --------
    >>> import numpy as np
    >>> import nbwoq
    >>> w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    >>> def error(values):
    ...     return float(((w - values).astype(np.float64) ** 2).sum())
    >>> rtn = nbwoq.quant_tensor(w.copy(), bits=4, group_size=128)
    >>> fit = nbwoq.refit_int(w.copy(), bits=4, group_size=128, weighting=None, return_int=False)
    >>> error(fit) < error(rtn)
    True
    >>> codes, scale, zp = nbwoq.refit_int(w.copy(), bits=4, group_size=128)
    >>> bool(codes.min() >= 0 and codes.max() <= 15), scale.shape, zp.shape
    (True, (64, 2), (64, 2))
    """
    bits = _validate.bits(bits)
    group_size = _validate.group_size(group_size)
    scheme = _validate.scheme(scheme)
    full_range = _validate.flag(full_range, "full_range")
    return_int = _validate.flag(return_int, "return_int")
    check = _validate.flag(check_finite, "check_finite")
    mode = _weighting(weighting)
    iterations = _iterations(iterations)
    sym = scheme == "sym"
    if bits <= 0:
        _validate.weight(weight, writable=False)
        return weight
    xp = _validate.weight(weight)
    _validate.full_range_bits(bits, sym, full_range)
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    quantile = _validate.quantile(quantile, rows, n_groups, xp)
    qmin, qmax, divisor = _integer.int_range(bits, sym, full_range)
    if check:
        _validate.check_finite(weight, xp)
    if xp is not None:
        scale, zp = _reference_refit.refit_int(weight, size, n_groups, quantile, float(qmin), float(qmax),
                                               float(divisor), sym, full_range, mode, iterations, not return_int, xp)
    else:
        cdt = _arrays.compute_dtype(weight.dtype)
        ctype = cdt.type
        q = _arrays.kernel_param(quantile, cdt)
        scale = np.empty((rows, n_groups), dtype=cdt)
        zp = np.empty((rows, n_groups), dtype=cdt)
        if rows and n_groups:
            _kernels_refit.refit_int(_arrays.kernel_view(weight), size, n_groups, q, ctype(qmin), ctype(qmax),
                                     ctype(divisor), sym, full_range, mode, iterations, not return_int, scale, zp)
    if not return_int:
        return weight
    return weight, scale, None if sym else zp
