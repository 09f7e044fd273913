"""Clip-ratio search on NumPy and array-API arrays: ``search_clip``.

The reference tries 40 clip ratios by fake-quantizing the whole weight 40 times. Here
all candidates are scored in one pass over the weight (``_kernels_clip``), or on the
array-API path by the reference twin (``_reference_clip``); the weight is only read.
"""

import numbers

import array_api_compat
import numpy as np

from nbwoq import _arrays, _integer, _kernels_clip, _reference_clip, _validate
from nbwoq._layout import group_layout
from nbwoq._tables import DTYPES, kernel_tables, reference_tables

#: The reference's candidates: ``1 - i / (N_GRID)`` for ``i < MAX_SHRINK * N_GRID``.
N_GRID = 200
MAX_SHRINK = 0.2
DEFAULT_COUNT = int(MAX_SHRINK * N_GRID)
#: Most candidates one search scores: every element is scored once per candidate.
MAX_CANDIDATES = 10_000


def candidates(grid=None):
    """The clip ratios to try, as Python floats, in the order they are tried.

    ``None``: the reference's 40, ``1 - i / 200`` (1.0 down to 0.805). An integer ``n``:
    ``n`` ratios evenly spaced over the same span, ``1 - i / (5 * n)`` (``n = 40`` gives
    the reference's). A sequence: those ratios, each in (0, 1].
    """
    if grid is None:
        grid = DEFAULT_COUNT
    if isinstance(grid, (numbers.Integral, np.integer)) and not isinstance(grid, (bool, np.bool_)):
        n = int(grid)
        if not 1 <= n <= MAX_CANDIDATES:
            raise ValueError(f"grid as a count must be an integer from 1 to {MAX_CANDIDATES}, got {grid!r}")
        # An integer, 5 * n: 200 for the reference's 40, so the very same float operations.
        spacing = n * N_GRID // DEFAULT_COUNT
        return [1 - i / spacing for i in range(n)]
    if isinstance(grid, (str, bytes, bool, np.bool_)) or not hasattr(grid, "__len__"):
        raise TypeError(f"grid must be None, a positive integer or a sequence of ratios in (0, 1], got {grid!r}")
    if len(grid) > MAX_CANDIDATES:
        raise ValueError(f"grid as a sequence may hold at most {MAX_CANDIDATES} ratios, got {len(grid)}")
    values = [_validate.quantile_scalar(_scalar(v), "grid values") for v in _elements(grid)]
    if not values:
        raise ValueError("grid as a sequence must hold at least one ratio, got an empty sequence")
    return values


def _elements(grid):
    if hasattr(grid, "shape") and len(grid.shape) != 1:
        raise ValueError(f"grid as an array must be 1-D, got shape {tuple(grid.shape)}")
    return [grid[i] for i in range(len(grid))]


def _scalar(v):
    # 0-d arrays (NumPy, torch, ...) become Python scalars; anything else is left for
    # quantile_scalar to refuse with a TypeError.
    if not isinstance(v, numbers.Real) and hasattr(v, "shape") and tuple(v.shape) == ():
        return float(v)
    return v


def _pick(totals):
    """Index of the smallest total, the first on a tie, ignoring NaN; None if none is finite."""
    best, low = None, float("inf")
    for k, value in enumerate(totals):
        if value < low:
            best, low = k, value
    return best


def search_clip(weight, bits=4, group_size=32, scheme="asym", dtype="int", enable_full_range=False, *,
                per_group=False, grid=None, weighting=None):
    """Clip ratio that minimizes the fake-quantization error of ``weight``; never writes.

    Every candidate ratio ``q`` is scored by the squared error between ``weight`` and
    ``quant_tensor(weight, bits, group_size, scheme, quantile=q, dtype=dtype,
    full_range=enable_full_range)``, all in one pass over the weight. The default
    candidates are the reference's, ``1 - i / 200`` for ``i = 0..39``.

    Parameters
    ----------
    weight : array, shape (rows, cols)
        float16, bfloat16, float32 or float64; NumPy arrays (read-only ones too) take
        the Numba kernel, any other array-API array the reference path on its device.
    bits : int, default 4
        1 to 16; ``bits <= 0`` quantizes nothing, so the first candidate wins.
    group_size : int, default 32
        -1 or a positive integer; groups as in ``quant_tensor``, tail group included.
    scheme : {"asym", "sym"}, default "asym"
    dtype : str, default "int"
        ``"int"`` or a 4-bit codebook of ``FLOAT_MAPPING`` (``"nf4"``, ``"fp4"``,
        ``"fp4_e2m1_bnb"``, ``"fp4_e2m1"``), which ignores ``bits``, ``scheme`` and
        ``enable_full_range`` as quant_tensor does.
    enable_full_range : bool, default False
        ``full_range`` of ``quant_tensor`` (symmetric only; needs ``bits >= 2``).
    per_group : bool, default False
        Return the best ratio of every group instead of one for the whole tensor.
    grid : None, int or sequence of float, optional
        The candidates: ``None`` for the reference's 40; a count ``n`` for ``n`` ratios
        evenly spaced from 1.0 down over the same span (``1 - i / (5 * n)``); or the
        ratios themselves, each in (0, 1], tried in the given order.
    weighting : {None, "magnitude"}, default None
        ``None`` scores the plain squared error, as the reference does. ``"magnitude"``
        multiplies each element's squared error by ``rms + |x|``, where ``rms`` is the
        root mean square of its group: large weights count more, so a ratio that clips
        them must buy a larger error reduction elsewhere. This is the data-free
        importance llama.cpp uses for its k-quants when it has no importance matrix.
        Plain weight MSE readily clips outliers that matter to a model's output; see the
        clip guide for measured perplexities.

    Returns
    -------
    float or array
        The ratio with the smallest total squared error, the first candidate on a tie,
        as a Python float (the candidate exactly, e.g. ``1 - 39 / 200``). With
        ``per_group``: an array of shape (rows, n_groups), in the compute dtype (float64
        for float64 weights, else float32) and in ``weight``'s namespace and device,
        holding each group's best ratio; pass it to ``quant_tensor`` as ``quantile``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument; ``ValueError`` for a weight holding NaN or Inf (naming the
        first such row), or, per tensor, when no candidate gives a finite error (group
        ranges that overflow the compute dtype, or scales that underflow to zero).
        Nothing is ever written to ``weight``.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq import search_clip, quant_tensor
    >>> w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    >>> search_clip(w, bits=4, group_size=32)
    0.985
    >>> q = search_clip(w, bits=4, group_size=32, per_group=True)
    >>> q.shape, q.dtype
    ((8, 2), dtype('float32'))
    >>> out = quant_tensor(w.copy(), bits=4, group_size=32, quantile=q)
    """
    xp = _validate.weight(weight, writable=False)
    bits = _validate.bits(bits)
    group_size = _validate.group_size(group_size)
    scheme = _validate.scheme(scheme)
    dtype = _validate.dtype(dtype, allowed=DTYPES)
    full_range = _validate.flag(enable_full_range, "enable_full_range")
    per_group = _validate.flag(per_group, "per_group")
    weighted = _validate.weighting(weighting)
    ratios = candidates(grid)
    sym = scheme == "sym"
    if dtype == "int":
        _validate.full_range_bits(bits, sym, full_range, "enable_full_range")
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    cdt = _arrays.compute_dtype(weight.dtype, xp)
    if bits <= 0:
        # quant_tensor leaves the weight as it is (any dtype): every candidate has zero error.
        return _constant(ratios[0], (rows, n_groups), cdt, weight, xp) if per_group else ratios[0]
    result, bad = _search(weight, xp, ratios, bits, size, n_groups, sym, full_range, per_group, dtype, weighted)
    if bad >= 0:
        _validate.non_finite(bad // n_groups, skippable=False)
    if per_group:
        return result
    best = _pick(result)
    if best is None:
        raise ValueError(
            "no clip ratio gives a finite quantization error: the group scales overflow or "
            f"underflow {np.dtype(cdt).name if xp is None else cdt} arithmetic (weight range too large or too tiny)"
        )
    return ratios[best]


def _constant(value, shape, cdt, weight, xp):
    if xp is None:
        return np.full(shape, value, dtype=cdt)
    return xp.full(shape, value, dtype=cdt, device=array_api_compat.device(weight))


def _search(weight, xp, ratios, bits, size, n_groups, sym, full_range, per_group, dtype="int", weighted=False):
    """Score ``ratios`` (Python floats) on either path, arguments already validated.

    Returns ``(result, bad)``: per tensor, ``result`` is the list of total squared errors
    (Python floats, one per ratio); per group, the array of best ratios (rows, n_groups).
    ``bad`` is the first group (``r * n_groups + g``) holding NaN or Inf, else -1; then
    ``result`` is meaningless.
    """
    codebook = dtype != "int"
    qmin, qmax, divisor = _integer.int_range(bits, sym, full_range) if not codebook else (0, 1, 1)
    if xp is not None:
        if codebook:
            mids, levels, _, max_level = reference_tables(dtype, weight, xp)
            fmt = ("codebook", mids, levels, max_level)
        else:
            fmt = ("int", float(qmin), float(qmax), float(divisor), sym, full_range)
        r = xp.asarray(ratios, dtype=_arrays.compute_dtype(weight.dtype, xp), device=array_api_compat.device(weight))
        result, bad = _reference_clip.search(weight, size, r, fmt, per_group, xp, weighted)
        if not per_group and bad < 0:
            result = [float(result[k]) for k in range(len(ratios))]
        return result, bad
    rows = weight.shape[0]
    cdt = _arrays.compute_dtype(weight.dtype)
    ctype = cdt.type
    # The kernel takes both formats' arguments; the codebook tables are always real ones
    # (nf4's stand in for the integer format) so that one compiled kernel serves both.
    mids, levels, _, max_level = kernel_tables(dtype if codebook else "nf4", cdt.name)
    n_tasks = rows * n_groups
    n_blocks = _kernels_clip.block_count(n_tasks)
    r = np.asarray(ratios, dtype=cdt)
    # Per group the kernel writes the answer directly; per tensor it writes one row of
    # partial sums per block, added here in a fixed order (same answer on any thread count).
    partial = np.zeros((n_blocks, 0 if per_group else len(ratios)), dtype=np.float64)
    best = np.empty((rows, n_groups) if per_group else (1, 1), dtype=cdt)
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    if n_blocks:
        _kernels_clip.search(
            _arrays.kernel_view(weight), size, n_groups, r, codebook, ctype(qmin), ctype(qmax), ctype(divisor), sym,
            full_range, mids, levels, max_level, n_blocks, per_group, weighted, partial, best, first_bad,
        )
    flagged = first_bad[first_bad >= 0]
    bad = int(flagged.min()) if flagged.size else -1
    if per_group:
        return best, bad
    return partial.sum(axis=0).tolist(), bad
