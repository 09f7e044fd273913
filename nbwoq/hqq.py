"""Data-free accuracy for asymmetric integer groups: ``refine_zero``, after HQQ.

HQQ (Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models",
2023) keeps each group's scale and moves its zero point to minimize the lp error
``sum |x - (q - z) s|**p`` (``p < 1``: a few large errors cost less than many small
ones) by half-quadratic splitting. HQQ stores that zero as a float; nbwoq's integer
layout (``quant_tensor``'s: an integer zero point in ``[qmin, qmax]``) stores nothing
extra, so ``refine_zero`` rounds it and keeps it only where it lowers the group's lp
error. No calibration data is needed. The Numba kernel is ``_kernels_hqq``; any other
array-API array takes the reference twin ``_reference_hqq`` on its own device.
"""

import math
import numbers

import numpy as np

from nbwoq import _arrays, _integer, _kernels_hqq, _reference_hqq, _validate
from nbwoq._layout import group_layout
from nbwoq.refit import _weighting

#: HQQ's defaults (``optimize_weights_proximal``): lp exponent, penalty, its growth per
#: iteration, iterations.
DEFAULT_P = 0.7
DEFAULT_BETA = 10.0
DEFAULT_KAPPA = 1.01
DEFAULT_ITERATIONS = 20
MAX_ITERATIONS = 1000

#: An element whose residual is below HQQ's shrink threshold ``beta**(-1 / (2 - p))``
#: times this factor has no sparse error, so its ``pow`` is skipped; the margin is far
#: wider than ``lp_pow``'s error, so the result is the one the ``pow`` would give.
CUT_MARGIN = 1.0 - 1e-6


def _real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _cut(beta, p):
    """The shrink cut ``beta**(-1 / (2 - p)) * CUT_MARGIN``; infinite where that power
    overflows (a tiny ``beta``: every residual is below HQQ's threshold)."""
    try:
        return beta ** (-1.0 / (2.0 - p)) * CUT_MARGIN
    except OverflowError:
        return math.inf


def schedule(p, beta, kappa, iterations):
    """Validated ``(p, betas, cuts, iterations)``: ``betas[k] = beta * kappa**k`` (by
    repeated multiplication) and the shrink cut of each iteration, float64 arrays."""
    p = _real(p, "p")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    beta = _real(beta, "beta")
    if not beta > 0.0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    kappa = _real(kappa, "kappa")
    if not kappa >= 1.0:
        raise ValueError(f"kappa must be at least 1, got {kappa!r}")
    iterations = _validate.integer(iterations, "iterations")
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an integer from 0 to {MAX_ITERATIONS}, got {iterations!r}")
    betas = []
    b = beta
    for _ in range(iterations):
        betas.append(b)
        b = b * kappa
    if betas and not math.isfinite(betas[-1]):
        raise ValueError(f"beta * kappa**(iterations - 1) overflows: beta={beta!r}, kappa={kappa!r}")
    cuts = [_cut(bk, p) for bk in betas]
    return p, np.array(betas, dtype=np.float64), np.array(cuts, dtype=np.float64), iterations


def refine_zero(weight, bits=4, group_size=128, scheme="asym", *, p=DEFAULT_P, beta=DEFAULT_BETA,
                kappa=DEFAULT_KAPPA, iterations=DEFAULT_ITERATIONS, weighting=None, quantile=1.0, return_int=True,
                check_finite=True):
    """Asymmetric integer group quantization with HQQ-refined integer zero points.

    Each group keeps round-to-nearest's scale ``s`` (``quant_tensor``'s, for clip ratio
    ``quantile``) and refines its zero point by HQQ's half-quadratic iterations, started
    at round-to-nearest's zero point, with a continuous zero ``z``: codes ``q =
    clamp(round(x / s + z), qmin, qmax)``, residual ``v = x - (q - z) s``, sparse error
    ``e = sign(v) max(|v| - |v|**(p - 1) / beta, 0)``, then ``z = mean(q - (x - e) / s)``
    and ``beta *= kappa``. As in HQQ, the iterations stop (keeping the previous ``z``)
    the first time the L1 error ``sum(w |v|)`` does not fall. The final ``z`` is rounded
    to an integer in ``[qmin, qmax]`` and kept only if it lowers the group's lp error

        ``sum(w * |x - (code - zp) * scale|**p)``

    (``w`` from ``weighting``; the fake-quantized value formed in the compute type), so no
    group ends worse than round-to-nearest by that measure. The result has exactly
    ``quant_tensor(..., return_int=True)``'s layout: ``code = clamp(round(x / scale) +
    zp, 0, 2**bits - 1)`` for the returned parameters.

    HQQ's shrink threshold is in the weight's units: with ``beta = 10`` only residuals
    above about 0.17 count as sparse errors, so on small weights the iteration moves
    ``z`` to the mean residual (the least-squares zero for the current codes).

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
    scheme : {"asym"}, default "asym"
        Only ``"asym"``: a symmetric group has no zero point to refine (``"sym"`` is a
        ``ValueError``; ``refit_int`` refits symmetric scales).
    p : float, default 0.7
        Exponent of the lp error, in (0, 1] (HQQ's ``lp_norm``).
    beta : float, default 10.0
        Initial penalty of the half-quadratic splitting (positive).
    kappa : float, default 1.01
        Growth of ``beta`` per iteration (at least 1).
    iterations : int, default 20
        At most this many iterations per group (0 to 1000); 0 gives round-to-nearest.
    weighting : {None, "magnitude"}, default None
        Element weights ``w`` of the L1 early stop and the lp acceptance test: 1 (HQQ's
        plain error), or ``rms + |x|`` (``rms`` the root mean square of the group), as in
        ``refit_int``. The zero-point update itself is HQQ's unweighted mean.
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
        numbers, ``scale`` and ``zp`` of shape (rows, n_groups) in the compute dtype
        (float64 for float64 weights, else float32); ``scale`` is round-to-nearest's.
        Otherwise ``weight`` holding the fake-quantized values.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, ``scheme="sym"`` or, with ``check_finite``, a weight holding
        NaN or Inf; raised before anything is written.

    Notes
    -----
    HQQ gains from its float zero point: a shift of the grid by a fraction of a step.
    An integer zero point can only move by whole steps, and from round-to-nearest's own
    grid (which spans the group's min and max) a whole step clips one end. On
    SmolLM2-135M at int4 asym g128 no zero point of the 898,560 groups moves from
    round-to-nearest's start, and 111 move from ``search_clip(per_group=True)``'s starts
    (``scripts/datafree_methods.py``, methods ``core-hqq`` and ``core-clip+hqq``:
    perplexity as round to nearest's and as the clip search's, to 0.001).

    See Also
    --------
    refit_int : least-squares refit of scale and zero point together.

    Examples
    --------
    >>> import numpy as np
    >>> import nbwoq
    >>> rng = np.random.default_rng(0)
    >>> w = (rng.standard_t(2, (64, 256)) * 0.02 + 0.006).astype(np.float32)
    >>> def lp_error(values):
    ...     return float((np.abs(w.astype(np.float64) - values) ** 0.7).sum())
    >>> clip = nbwoq.quant_tensor(w.copy(), bits=4, group_size=32, quantile=0.5)
    >>> hqq = nbwoq.refine_zero(w.copy(), bits=4, group_size=32, quantile=0.5, return_int=False)
    >>> lp_error(hqq) < lp_error(clip)
    True

    From round-to-nearest's own min-max grid a whole step of zero point clips an end of
    the group, so there the rounded zero rarely moves:

    >>> rtn = nbwoq.quant_tensor(w.copy(), bits=4, group_size=128)
    >>> bool(np.array_equal(nbwoq.refine_zero(w.copy(), return_int=False), rtn))
    True
    >>> codes, scale, zp = nbwoq.refine_zero(w.copy(), bits=4, group_size=128)
    >>> bool(codes.min() >= 0 and codes.max() <= 15), scale.shape, zp.shape
    (True, (64, 2), (64, 2))
    """
    bits = _validate.bits(bits)
    group_size = _validate.group_size(group_size)
    scheme = _validate.scheme(scheme)
    if scheme != "asym":
        raise ValueError("refine_zero refines asymmetric zero points: scheme='sym' has none "
                         "(refit_int refits symmetric scales)")
    return_int = _validate.flag(return_int, "return_int")
    check = _validate.flag(check_finite, "check_finite")
    mode = _weighting(weighting)
    p, betas, cuts, iterations = schedule(p, beta, kappa, iterations)
    if bits <= 0:
        _validate.weight(weight, writable=False)
        return weight
    xp = _validate.weight(weight)
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    quantile = _validate.quantile(quantile, rows, n_groups, xp)
    qmin, qmax, divisor = _integer.int_range(bits, False, False)
    if check:
        _validate.check_finite(weight, xp)
    if xp is not None:
        scale, zp = _reference_hqq.refine_zero(weight, size, quantile, float(qmin), float(qmax), float(divisor), mode,
                                               p, betas.tolist(), cuts.tolist(), iterations, not return_int, xp)
    else:
        cdt = _arrays.compute_dtype(weight.dtype)
        ctype = cdt.type
        q = _arrays.kernel_param(quantile, cdt)
        scale = np.empty((rows, n_groups), dtype=cdt)
        zp = np.empty((rows, n_groups), dtype=cdt)
        if rows and n_groups:
            _kernels_hqq.refine_zero(_arrays.kernel_view(weight), size, n_groups, q, ctype(qmin), ctype(qmax),
                                     ctype(divisor), mode, p, betas, cuts, iterations, not return_int, scale, zp)
    if not return_int:
        return weight
    return weight, scale, zp
