"""Array-API reference for the HQQ-style zero-point refinement: the twin of ``_kernels_hqq``.

Every group of a part (the full groups, then the tail) is handled at once; groups that
stopped early are frozen by masks. Sums run as loops over the group's elements in the
kernel's lane order (``_reference_refit.lane_sum``), and ``lp_pow`` repeats the kernel's
series with the standard's operations only (no ``frexp``/``ldexp`` in the standard: exact
multiplications by powers of two stand in for them), so both paths give the same bits.
Readability over speed: full-size temporaries.
"""

import array_api_compat

from nbwoq._arrays import compute_dtype
from nbwoq._kernels_hqq import EXP_TERMS, INV_LN2, LN2, LOG_TERMS, SQRT2
from nbwoq._reference_int import concat_columns, int_code, int_group_params, parts
from nbwoq._reference_refit import element_weights, lane_sum

#: Exponent steps: enough to bring any finite positive float64 (subnormals included,
#: down to 2**-1074) into [1, 2) by exact multiplications.
_UP = (512, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
_DOWN = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


def split(a, xp):
    """``(m, k)`` with ``a = m * 2**k``, ``m`` in ``[sqrt(1/2), sqrt(2))``, ``k`` whole
    (float64); exact for any finite positive float64 ``a`` (``frexp`` by the standard's
    operations). Also ``dual``'s normalization."""
    m = a
    k = xp.zeros_like(a)
    one = xp.ones_like(a)
    for step in _UP:  # the factor chosen first: a large m times 2**512 would overflow (and warn)
        small = m < 2.0 ** (1 - step)
        m = m * xp.where(small, one * 2.0 ** step, one)
        k = xp.where(small, k - step, k)
    for step in _DOWN:
        big = m >= 2.0 ** step
        m = m * xp.where(big, one * 2.0 ** -step, one)
        k = xp.where(big, k + step, k)
    top = m >= SQRT2
    return xp.where(top, m * 0.5, m), xp.where(top, k + 1, k)


def _power_of_two(h, xp):
    """``2.0 ** h`` for whole ``h`` with ``|h| <= 1023``, exactly."""
    a = xp.abs(h)
    out = xp.ones_like(h)
    for j in range(10):
        bit = xp.remainder(xp.floor(a / 2.0 ** j), 2.0) == 1.0
        out = xp.where(bit, out * 2.0 ** (2 ** j), out)
    return xp.where(h < 0, 1.0 / out, out)


def _ldexp(x, n, xp):
    """``x * 2**n`` rounded once, for ``x`` in [0.7, 1.5] and whole ``|n| <= 2000``:
    the first half of the scaling is exact, the second rounds as ``ldexp`` does."""
    h = xp.floor(n / 2.0)
    return (x * _power_of_two(h, xp)) * _power_of_two(n - h, xp)


def lp_pow(a, y, xp):
    """Twin of ``_kernels_hqq.lp_pow`` over a float64 array ``a`` (finite, > 0)."""
    m, k = split(a, xp)
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    poly = xp.zeros_like(a)
    for c in LOG_TERMS:
        poly = poly * t2 + c
    u = y * (k * LN2 + (2.0 * t) * poly)
    n = xp.round(u * INV_LN2)
    r = u - n * LN2
    ex = xp.zeros_like(a)
    for c in EXP_TERMS:
        ex = ex * r + c
    return _ldexp(ex, n, xp)


def lp_error(part, w64, scale, zp, qmin, qmax, p, xp):
    """Twin of ``_kernels_hqq.lp_error`` for every group of ``part`` (rows, k, size)."""
    code = int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp)
    values = (code - zp[..., None]) * scale[..., None]
    v = xp.abs(xp.astype(part, xp.float64) - xp.astype(values, xp.float64))
    pos = v > 0
    terms = xp.where(pos, w64 * lp_pow(xp.where(pos, v, 1.0), p, xp), w64 * v)
    return lane_sum(terms, xp)


def refine_groups(x64, xs, w64, z0, s64, qmin, qmax, p, betas, cuts, iterations, xp):
    """Twin of ``_kernels_hqq.refine_group``: the continuous zero points (rows, k)."""
    n = x64.shape[-1]
    s = s64[..., None]
    z = z0
    z_best = z0
    best = xp.full(z0.shape, float("inf"), dtype=xp.float64, device=array_api_compat.device(z0))
    active = xp.ones(z0.shape, dtype=xp.bool, device=array_api_compat.device(z0))
    for k in range(iterations):
        q = xp.clip(xp.round(xs + z[..., None]), float(qmin), float(qmax))
        v = x64 - (q - z[..., None]) * s
        err = lane_sum(w64 * xp.abs(v), xp)
        stop = active & ~(err < best)
        z = xp.where(stop, z_best, z)
        active = active & ~stop
        if not bool(xp.any(active)):
            break
        best = xp.where(active, err, best)
        z_best = xp.where(active, z, z_best)
        a = xp.abs(v)
        big = a > cuts[k]
        d = a - lp_pow(xp.where(big, a, 1.0), p - 1.0, xp) / betas[k]
        d = xp.where(d > 0, d, 0.0)
        e = xp.where(v > 0, d, -d)
        terms = xp.where(big, q - (x64 - e) / s, q - xs)
        z = xp.where(active, lane_sum(terms, xp) / n, z)
    return z


def refine_part(part, quantile, qmin, qmax, divisor, weighting, p, betas, cuts, iterations, xp):
    """Scale and zero point (rows, k) of every group of ``part`` (rows, k, size)."""
    cdt = part.dtype
    scale, zp = int_group_params(xp.min(part, axis=-1), xp.max(part, axis=-1), quantile, divisor, False, False,
                                 xp)
    if iterations == 0:
        return scale, zp
    x64 = xp.astype(part, xp.float64)
    s64 = xp.astype(scale, xp.float64)
    xs = x64 / s64[..., None]
    w64 = element_weights(part, x64, weighting, xp)
    z = refine_groups(x64, xs, w64, xp.astype(zp, xp.float64), s64, qmin, qmax, p, betas, cuts, iterations, xp)
    new_zp = xp.astype(xp.clip(xp.round(z), float(qmin), float(qmax)), cdt)
    changed = new_zp != zp
    if not bool(xp.any(changed)):
        return scale, zp
    # unchanged groups are scored with their own zero point (and then not taken)
    trial = xp.where(changed, new_zp, zp)
    before = lp_error(part, w64, scale, zp, qmin, qmax, p, xp)
    after = lp_error(part, w64, scale, trial, qmin, qmax, p, xp)
    return scale, xp.where(changed & (after < before), trial, zp)


def refine_zero(x, size, quantile, qmin, qmax, divisor, weighting, p, betas, cuts, iterations, store_values, xp):
    """Twin of ``_kernels_hqq.refine_zero``: writes codes (or values) into ``x`` and
    returns ``(scale, zp)`` of shape (rows, n_groups) in the compute dtype."""
    rows = x.shape[0]
    cdt = compute_dtype(x.dtype, xp)
    device = array_api_compat.device(x)
    w = xp.astype(x, cdt)
    if not isinstance(quantile, float):
        quantile = xp.astype(quantile, cdt)
    out, scales, zps = [], [], []
    for part, cut in parts(w, size, xp):
        q = quantile if isinstance(quantile, float) else quantile[:, cut]
        scale, zp = refine_part(part, q, qmin, qmax, divisor, weighting, p, betas, cuts, iterations, xp)
        scales.append(scale)
        zps.append(zp)
        code = int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp)
        values = (code - zp[..., None]) * scale[..., None] if store_values else code
        out.append(xp.reshape(values, (rows, part.shape[1] * part.shape[2])))
    if out:
        x[...] = xp.astype(concat_columns(out, rows, cdt, xp, device), x.dtype)
    return concat_columns(scales, rows, cdt, xp, device), concat_columns(zps, rows, cdt, xp, device)
