"""The dual-axis (row x column) scale search of SINQ, as a column scale that folds away.

SINQ (Sinkhorn-normalized quantization, Müller et al. 2025) balances a weight matrix
before round-to-nearest: alternately dividing its rows and its columns by their standard
deviations (a Sinkhorn-Knopp iteration on the matrix's spread) until the ratio of the
largest to the smallest of those deviations, its *imbalance*, stops falling. A row
factor is free for group quantization (each group lies in one row, and round-to-nearest
scales with it); a column factor is free only where the operation that feeds the layer
absorbs it (``nbwoq.absorb``). ``dual_scale`` returns that column factor, found for one
or several weights that share their input columns (q, k and v behind one norm), in the
form ``fold_column_scale`` takes.

Where it differs from folding the normalizer as it comes: the Sinkhorn factor ``mu`` is
only the *direction*. The candidates are ``mu ** alpha`` for a few powers ``alpha``, one
of them 0 (no scale: round to nearest itself), and each group of columns takes the
power with the least error measured where it matters, on the original weight:
``sum(w_el * (W - deq(Q(W / s)) * s) ** 2)``. The error of a column group depends on
that group's scale only (a group never spans two column groups), so the choice per
group is exact, and no group, hence no weight, ends worse than round to nearest by that
measure. A column scale applied the wrong way, or too strongly (the prototype folded
``sqrt`` of the column deviation into the weight, multiplying the spread it meant to
divide; -63% of the perplexity gap at Q4_0), is simply not chosen.

The error pass, one round-to-nearest per candidate, is the Numba kernel
``_kernels_dual`` for NumPy weights and its array-API twin ``_reference_dual`` for any
other array. So are the Sinkhorn statistics (``scaled_moments``, the same sums in the
same order); the rest of the start is array-API code both share, so NumPy and
``array_api_strict`` choose alike bit for bit (another library's ``exp``/``log`` may
round a candidate differently in the last bit).
"""

import math
from typing import NamedTuple

import array_api_compat
import numpy as np

from nbwoq import _arrays, _integer, _kernels_dual, _reference_dual, _validate
from nbwoq._layout import group_layout
from nbwoq._reference_hqq import split
from nbwoq.refit import _weighting

#: Powers of the Sinkhorn factor tried besides 0 (round to nearest, always tried first).
DEFAULT_ALPHAS = (0.25, 0.5, 0.75, 1.0)
DEFAULT_ITERATIONS = 16
MAX_ITERATIONS = 256
#: Distinct powers ``dual_scale`` takes besides 0.
MAX_ALPHAS = 64
#: Bound of |alpha|; and the Sinkhorn factor is kept within 1/SPREAD .. SPREAD of 1 (near its
#: geometric mean; a column of zeros has no deviation to divide by).
MAX_ALPHA = 4.0
SPREAD = 1e3
#: The Sinkhorn steps stop once a step lowers the imbalance by less than this fraction.
TOLERANCE = 1e-4


class DualScale(NamedTuple):
    """What ``dual_scale`` found.

    Attributes
    ----------
    scale : array, float64, shape (channels,)
        The feeder's scale: pass it to ``nbwoq.fold_column_scale`` as is (the feeder's
        output channels are multiplied by it, the consumers' columns divided by it).
        Positive and finite; 1.0 wherever round to nearest was kept.
    alpha : array, float64, shape (channels,)
        The power of the Sinkhorn factor chosen for each channel (0.0: none).
    error : float
        The weighted squared error of the folded weights after round to nearest,
        measured on the original weights (float64 sum over every weight).
    rtn_error : float
        The same for round to nearest without a scale; ``error <= rtn_error``.
    """

    scale: object
    alpha: object
    error: float
    rtn_error: float


def _weights(weights):
    """The weights as a list, checked: 2-D floats of one kind, dtype and width."""
    if isinstance(weights, (list, tuple)):
        weights = list(weights)
        if not weights:
            raise ValueError("weights must hold at least one array")
    else:
        weights = [weights]
    xps = [_validate.weight(w, f"weights[{i}]", writable=False) for i, w in enumerate(weights)]
    first = weights[0]
    for i, (w, xp) in enumerate(zip(weights, xps)):
        if xp is not xps[0]:
            raise TypeError(f"weights[{i}] is not the same kind of array as weights[0]")
        if w.dtype != first.dtype:
            raise TypeError(f"weights[{i}] has dtype {w.dtype}, weights[0] {first.dtype}: stack them in one dtype")
        if w.shape[1] != first.shape[1]:
            raise ValueError(f"weights share their input columns: weights[{i}] has {w.shape[1]} columns, "
                             f"weights[0] {first.shape[1]}")
    return weights, xps[0]


def _alphas(alphas):
    """``(0.0, *alphas)`` without repeats, in order."""
    if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__iter__"):
        raise TypeError(f"alphas must be a sequence of numbers, got {type(alphas).__name__}")
    out = [0.0]
    for a in alphas:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, float, np.integer, np.floating)):
            raise TypeError(f"alphas must hold real numbers, got {a!r}")
        a = float(a)
        if not abs(a) <= MAX_ALPHA:
            raise ValueError(f"alphas must lie in [-{MAX_ALPHA}, {MAX_ALPHA}], got {a!r}")
        if a not in out:
            out.append(a)
    if len(out) - 1 > MAX_ALPHAS:  # besides the 0 always tried
        raise ValueError(f"at most {MAX_ALPHAS} distinct alphas besides 0, got {len(out) - 1}")
    return tuple(out)


def _tie(cols, repeat, block):
    repeat = _validate.integer(repeat, "repeat")
    block = _validate.integer(block, "block")
    if repeat < 1 or (repeat > 1 and block < 1) or (repeat == 1 and block != 0):
        raise ValueError(f"repeat must be >= 1 and block >= 1 exactly when repeat > 1, got repeat {repeat}, "
                         f"block {block}")
    if repeat > 1 and cols % (repeat * block):
        raise ValueError(f"{cols} columns are not a whole number of heads of {block} x {repeat} repeats")
    return repeat, block


def _vector(value, name, length, space, device, positive):
    """A 1-D float64 array of ``length`` finite values (``positive``: > 0, else >= 0) on
    the weights' device, from a NumPy array or an array of the weights' kind."""
    try:
        value = space.asarray(value, dtype=space.float64, device=device)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D array of real numbers, got {type(value).__name__}") from None
    if value.ndim != 1 or value.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(value.shape)}")
    ok = (value > 0) if positive else (value >= 0)
    if not bool(space.all(ok & space.isfinite(value))):
        raise ValueError(f"{name} must be finite and {'positive' if positive else 'non-negative'}")
    return value


def _normalized(mu, xp):
    """``mu`` divided by ``2**k``, ``k`` the whole number nearest the mean of ``log2(mu)``
    (a tie: the upper one), kept within ``SPREAD`` of 1.

    ``k`` is formed from the exact exponents of ``mu`` (``split``) in Python integers
    plus the mean of the mantissas' logarithms, so ``mu * 2**j`` gives ``k + j`` exactly
    and the very same result: a weight scaled by a power of two gets the same factor
    (``round`` of the plain mean would break a tie at ``j + 0.5`` by ``j``'s parity).
    The division is two exact steps, with the far factors (which the ``SPREAD`` clip
    takes anyway) clipped first, so no ``mu`` overflows on the way (``2**k`` itself
    may not be a float64 number: ``k`` runs from -1074 to 1024)."""
    n = mu.shape[0]
    m, e = split(mu, xp)
    q, r = divmod(int(xp.sum(e)), n)  # whole exponents: the float64 sum is exact
    k = q + math.floor((r + float(xp.sum(xp.log2(m)))) / n + 0.5)
    h = -k // 2
    mu = xp.clip(mu, 2.0 ** max(k - 12, -1074), 2.0 ** min(k + 12, 1023))  # 2**12 > SPREAD
    mu = (mu * 2.0 ** h) * 2.0 ** (-k - h)  # each step exact: 2**(k + h) is within 2**-537 .. 2**512
    return xp.clip(mu, 1.0 / SPREAD, SPREAD)


def _floored(std, xp):
    """Deviations below a millionth of the largest raised to it (all zero: ones)."""
    top = xp.max(std)
    low = xp.where(top > 0, top * 1e-6, xp.ones_like(top))
    return xp.where(std > low, std, low)


def _moments(m, v, xp):
    """Per row of ``m``: mean and mean square of ``m * v[None, :]`` (the Numba kernel
    for NumPy, the twin otherwise; the same sums in the same order)."""
    if array_api_compat.is_numpy_namespace(xp):
        mean = np.empty(m.shape[0], dtype=np.float64)
        sq = np.empty(m.shape[0], dtype=np.float64)
        _kernels_dual.scaled_moments(m, np.ascontiguousarray(v), mean, sq)
        return mean, sq
    return _reference_dual.scaled_moments(m, v, xp)


def _spread(m, inv_other, inv_own, xp):
    """Floored standard deviations of the rows of ``m * inv_other[None, :] * inv_own[:,
    None]``: the mean of squares less the square of the mean, over the rows scaled by
    ``inv_other`` only, then times ``inv_own``."""
    mean, sq = _moments(m, inv_other, xp)
    return _floored(_arrays.sqrt(xp.maximum(sq - mean * mean, xp.zeros_like(mean)), xp) * inv_own, xp)


def sinkhorn_factor(m, iterations, xp):
    """SINQ's column factor of ``m`` (float64, (rows, channels)): alternately divide the
    columns and the rows by their standard deviations; the column factor of the step
    before the imbalance ``max(std) / min(std)`` over rows and columns stops falling
    (by ``TOLERANCE``; step 0: no factor), divided by the power of two nearest its
    geometric mean and kept within ``SPREAD`` of 1."""
    device = array_api_compat.device(m)
    if array_api_compat.is_numpy_namespace(xp):
        m = np.ascontiguousarray(m)
        mt = np.ascontiguousarray(m.T)
    else:
        mt = xp.permute_dims(m, (1, 0))
    mu_c = xp.ones((m.shape[1],), dtype=xp.float64, device=device)
    mu_r = xp.ones((m.shape[0],), dtype=xp.float64, device=device)
    best_c = mu_c
    best = None
    sc = None
    for step in range(iterations + 1):
        if step:
            mu_c = mu_c * sc
            mu_r = mu_r * _spread(m, 1.0 / mu_c, 1.0 / mu_r, xp)
        sc = _spread(mt, 1.0 / mu_r, 1.0 / mu_c, xp)
        sr = _spread(m, 1.0 / mu_c, 1.0 / mu_r, xp)
        imbalance = float(xp.maximum(xp.max(sc), xp.max(sr)) / xp.minimum(xp.min(sc), xp.min(sr)))
        if best is not None and not imbalance < best:
            break  # SINQ's stop: the imbalance no longer falls
        converged = best is not None and imbalance > best * (1 - TOLERANCE)
        best, best_c = imbalance, mu_c
        if converged:
            break
    return _normalized(best_c, xp)


def _tied_columns(m, repeat, block, xp):
    """``m`` (rows, cols) as (rows * repeat, channels): the ``repeat`` copies of a
    channel's column stacked as rows, so the tied columns share one statistic."""
    if repeat == 1:
        return m
    rows, cols = m.shape
    heads = cols // (repeat * block)
    t = xp.permute_dims(xp.reshape(m, (rows, heads, repeat, block)), (2, 0, 1, 3))
    return xp.reshape(t, (repeat * rows, heads * block))


def _consumer_columns(s, repeat, block, xp):
    """Per-channel values (n, channels) repeated to the consumer's columns (n, cols)."""
    if repeat == 1:
        return s
    n, channels = s.shape
    heads = channels // block
    t = xp.broadcast_to(xp.reshape(s, (n, heads, 1, block)), (n, heads, repeat, block))
    return xp.reshape(t, (n, heads * repeat * block))


def _units(cols, size, n_groups, repeat, block):
    """Unit of each column group (NumPy ints): groups whose columns read one feeder
    channel must take one scale; they are joined (each group its own unit otherwise)."""
    parent = list(range(n_groups))

    def root(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    if repeat > 1:
        seen = {}
        for j in range(cols):
            ch = (j // (repeat * block)) * block + j % block
            g = j // size
            if ch in seen:
                a, b = root(seen[ch]), root(g)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                seen[ch] = g
    roots = [root(g) for g in range(n_groups)]
    labels = {r: i for i, r in enumerate(sorted(set(roots)))}
    return np.array([labels[r] for r in roots], dtype=np.int64), len(labels)


def dual_scale(weights, bits=4, group_size=128, scheme="asym", full_range=False, *, repeat=1, block=0,
               iterations=DEFAULT_ITERATIONS, alphas=DEFAULT_ALPHAS, weighting="magnitude", column_weights=None,
               direction=None, check_finite=True):
    """The column scale, found by SINQ's dual-axis normalization, that lowers the error of
    round to nearest on weights sharing one feeder.

    SINQ's Sinkhorn iteration gives each input column a factor ``mu`` (its spread,
    relative to the others, once rows and columns are balanced). For each power
    ``alpha`` in ``(0, *alphas)`` the consumers' columns are divided by ``mu ** alpha``
    (as ``fold_column_scale`` does), quantized to nearest (``quant_tensor``'s rule) and
    multiplied back; each group of ``group_size`` columns keeps the power whose weighted
    squared error over every row of every weight is least (ties: the smaller index, so
    round to nearest wins a tie). Nothing is written.

    Parameters
    ----------
    weights : array or sequence of arrays, each (rows_i, cols)
        The consumers of one feeder (``q``, ``k`` and ``v`` behind one norm), stacked by
        rows for the search: one dtype (float16, bfloat16, float32, float64), one kind
        (NumPy arrays take the Numba kernel, any other array-API array the reference
        path on its own device). Only read.
    bits, group_size, scheme, full_range
        The integer setting the weights will be quantized with, as in ``quant_tensor``
        (``bits`` from 1 to 16).
    repeat, block : int, default 1, 0
        Grouped-query attention's tie (``AbsorbGroup.repeat``, ``block``): consumer
        column ``(g * repeat + r) * block + c`` reads feeder channel ``g * block + c``.
        The columns of one channel share one statistic and one scale.
    iterations : int, default 16
        Sinkhorn steps (0 to 256); 0 leaves round to nearest.
    alphas : sequence of float, default (0.25, 0.5, 0.75, 1.0)
        Powers of the Sinkhorn factor tried besides 0, each in [-4, 4] (a negative power
        scales the other way, as AWQ does); at most 64.
    weighting : {"magnitude", None}, default "magnitude"
        Element importance in the error: ``rms + |x|`` of the element's group of the
        original weight, as ``refit_int(weighting="magnitude")``; None: plain squares.
    column_weights : array, shape (cols,), optional
        Non-negative importance of each consumer column, multiplying the element's
        (e.g. the input's mean square per column, measured or estimated): the error
        then approximates the output's. NumPy, or an array of the weights' kind.
    direction : array, shape (channels,), optional
        Positive factor per feeder channel used instead of the Sinkhorn factor (e.g.
        the input's root mean square: with negative ``alphas`` the search is AWQ's);
        ``iterations`` is then unused.
    check_finite : bool, default True
        Refuse NaN/Inf (``ValueError`` naming the weight's first bad row).

    Returns
    -------
    DualScale
        ``scale`` (channels,) for ``fold_column_scale``, the chosen ``alpha`` per
        channel, and the weighted ``error`` with that scale and ``rtn_error`` without,
        both measured on the original weights. With float32 or float64 weights folding
        ``scale`` and quantizing with ``quant_tensor`` gives ``error`` exactly; with
        halves the fold's quotient is rounded once, the search's through float32.

    Raises
    ------
    TypeError, ValueError
        For a bad argument or, with ``check_finite``, a weight holding NaN or Inf.

    Examples
    --------
    >>> import numpy as np
    >>> import nbwoq
    >>> rng = np.random.default_rng(0)
    >>> w = (rng.standard_normal((64, 256)) * rng.lognormal(0, 1, 256)).astype(np.float32)
    >>> found = nbwoq.dual_scale(w, bits=4, group_size=128)
    >>> found.error < found.rtn_error
    True
    >>> group = nbwoq.AbsorbGroup("norm", "norm", ("w",))
    >>> norm, (folded,), _ = nbwoq.fold_column_scale(group, found.scale, np.ones(256, np.float32), [w])
    >>> q = nbwoq.quant_tensor(folded.copy(), bits=4, group_size=128) * found.scale
    >>> bool(((w - q) ** 2).sum() < ((w - nbwoq.quant_tensor(w.copy(), bits=4, group_size=128)) ** 2).sum())
    True
    """
    weights, xp = _weights(weights)
    bits = _validate.positive_bits(bits)
    group_size = _validate.group_size(group_size)
    sym = _validate.scheme(scheme) == "sym"
    full_range = _validate.flag(full_range, "full_range")
    _validate.full_range_bits(bits, sym, full_range)
    cols = weights[0].shape[1]
    repeat, block = _tie(cols, repeat, block)
    iterations = _validate.integer(iterations, "iterations")
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an integer from 0 to {MAX_ITERATIONS}, got {iterations}")
    alphas = _alphas(alphas)
    mode = _weighting(weighting)
    space = _arrays.namespace(weights[0]) if xp is None else xp  # NumPy through array_api_compat
    device = array_api_compat.device(weights[0])
    channels = cols // repeat
    colw = space.ones((cols,), dtype=space.float64, device=device)
    if column_weights is not None:
        colw = _vector(column_weights, "column_weights", cols, space, device, False)
    if direction is not None:
        direction = _vector(direction, "direction", channels, space, device, True)
    check = _validate.flag(check_finite, "check_finite")
    if check:
        for i, w in enumerate(weights):
            try:
                _validate.check_finite(w, xp)
            except _validate.NonFiniteError as exc:
                raise _validate.NonFiniteError(f"weights[{i}]: {exc}", exc.row) from None
    qmin, qmax, divisor = _integer.int_range(bits, sym, full_range)
    rows = sum(w.shape[0] for w in weights)
    if rows == 0 or cols == 0:
        ones = space.ones((channels,), dtype=space.float64, device=device)
        return DualScale(ones, ones * 0.0, 0.0, 0.0)
    stacked = weights[0] if len(weights) == 1 else space.concat(weights, axis=0)
    if direction is None:
        mu = sinkhorn_factor(_tied_columns(space.astype(stacked, space.float64), repeat, block, space),
                             iterations, space)
    else:
        mu = _normalized(direction, space)
    powers = space.asarray(alphas, dtype=space.float64, device=device)
    feeder = space.exp(powers[:, None] * space.log(mu)[None, :])  # alpha 0: exactly 1
    cand = _consumer_columns(feeder, repeat, block, space)
    size, n_groups = group_layout(cols, group_size)
    if xp is None:
        ctype = _arrays.compute_dtype(stacked.dtype).type
        err = np.empty((len(alphas), rows, n_groups), dtype=np.float64)
        _kernels_dual.dual_errors(_arrays.kernel_view(np.ascontiguousarray(stacked)), np.ascontiguousarray(cand),
                                  np.ascontiguousarray(colw), size, n_groups, ctype(qmin), ctype(qmax),
                                  ctype(divisor), sym, full_range, mode, err)
    else:
        err = _reference_dual.dual_errors(stacked, cand, colw, size, float(qmin), float(qmax), float(divisor), sym,
                                          full_range, mode, xp)
    return _choose(space, err, feeder, alphas, cols, size, n_groups, repeat, block, device)


def _choose(xp, err, feeder, alphas, cols, size, n_groups, repeat, block, device):
    """Per unit of column groups the candidate of least total error; the result."""
    totals = xp.sum(err, axis=1)  # (n_cand, n_groups), rows in the library's order
    totals = xp.where(xp.isnan(totals), xp.full_like(totals, np.inf), totals)
    units, n_units = _units(cols, size, n_groups, repeat, block)
    if n_units == n_groups:
        per_unit = totals
    else:
        per_unit = xp.stack([sum(totals[:, g] for g in np.flatnonzero(units == u)) for u in range(n_units)],
                            axis=1)
    pick = xp.argmin(per_unit, axis=0)  # first of equal minima: alpha 0 wins a tie
    channels = feeder.shape[1]
    col = np.arange(channels)
    # the unit of each channel: that of its first consumer column
    first_col = (col // block) * repeat * block + col % block if repeat > 1 else col
    k = xp.take(pick, xp.asarray(units[first_col // size], device=device))
    scale = xp.zeros((channels,), dtype=xp.float64, device=device)
    alpha = xp.zeros((channels,), dtype=xp.float64, device=device)
    for i, a in enumerate(alphas):
        scale = xp.where(k == i, feeder[i, :], scale)
        alpha = xp.where(k == i, xp.full_like(alpha, a), alpha)
    best = xp.min(per_unit, axis=0)
    return DualScale(scale, alpha, float(xp.sum(best)), float(xp.sum(totals[0, :])))
