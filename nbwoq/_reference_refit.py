"""Array-API reference for the least-squares refit: the twin of ``_kernels_refit``.

Every group of a part (the full groups, then the tail) is handled at once; the per-element
work (codes, products) is vectorized, and only the float64 sums run as a loop over the
group's elements (``lane_sum``), so that they are added in the kernel's order and both
paths give the same bits. Readability over speed: full-size temporaries.
"""

import array_api_compat

from nbwoq import _arrays
from nbwoq._arrays import compute_dtype
from nbwoq._kernels_lanes import MAGNITUDE, UNIFORM  # noqa: F401 (the twins' weighting codes)
from nbwoq._reference_int import concat_columns, int_code, int_group_params, parts


def lane_sum(v, xp):
    """Sum over the last axis of float64 ``v`` in the kernel's order: element ``i`` into
    lane ``i % 4``, the lanes added as ``(l0 + l1) + (l2 + l3)``."""
    lanes = [xp.zeros(v.shape[:-1], dtype=v.dtype, device=array_api_compat.device(v)) for _ in range(4)]
    for i in range(v.shape[-1]):
        lanes[i % 4] = lanes[i % 4] + v[..., i]
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])


def element_weights(part, x64, weighting, xp):
    """Float64 weight per element of ``part`` (``x64``: it in float64): ``rms + |x|`` in
    ``part``'s dtype under the magnitude weighting, the group's rms from the squares in the
    lane order, rounded to that dtype (``_kernels_lanes.magnitude_rms``); ones otherwise."""
    if weighting != MAGNITUDE:
        return xp.ones_like(x64)
    rms = xp.astype(_arrays.sqrt(lane_sum(x64 * x64, xp) / part.shape[-1], xp), part.dtype)
    return xp.astype(rms[..., None] + xp.abs(part), xp.float64)


def group_constants(part, weighting, xp):
    """Per element float64 ``w`` and ``w x``, and the group sums ``(a, d, f)`` =
    ``(sum(w), sum(w x), sum(w x x))``, as the kernel forms them."""
    x64 = xp.astype(part, xp.float64)
    w64 = element_weights(part, x64, weighting, xp)
    wx = w64 * x64
    return w64, wx, (lane_sum(w64, xp), lane_sum(wx, xp), lane_sum(wx * x64, xp))


def error_from_sums(sums, scale, zp, xp):
    """Twin of ``_kernels_refit.error_from_sums``."""
    a, b, c, d, e, f = sums
    s = xp.astype(scale, xp.float64)
    z = xp.astype(zp, xp.float64)
    return f - (2 * s) * (e - z * d) + (s * s) * (c - (2 * z) * b + (z * z) * a)


def score(part, w64, wx, consts, scale, zp, qmin, qmax, xp):
    """Weighted error and the sums ``(a, b, c, d, e, f)`` of the codes for
    ``(scale, zp)`` (each (rows, k)), as ``_kernels_refit._score``."""
    q64 = xp.astype(int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp), xp.float64)
    wq = w64 * q64
    a, d, f = consts
    sums = (a, lane_sum(wq, xp), lane_sum(wq * q64, xp), d, lane_sum(wx * q64, xp), f)
    return error_from_sums(sums, scale, zp, xp), sums


def fit(sums, zp, qmin, qmax, sym, xp):
    """Twin of ``_kernels_refit.fit`` over arrays: ``(ok, scale, zp)`` in float64."""
    a, b, c, d, e = sums[:5]
    zero = xp.zeros_like(a)
    if sym:
        ok = c > zero
        return ok, xp.where(ok, e / xp.where(ok, c, 1.0), zero), zero
    z_cur = xp.astype(zp, xp.float64)
    det = a * c - b * b
    safe_det = xp.where(det > zero, det, 1.0)
    s_c = (a * e - b * d) / safe_det
    m_c = (c * d - b * e) / safe_det
    more = (det > zero) & (s_c > zero)
    z_lo = xp.floor(-m_c / xp.where(more, s_c, 1.0))
    found = xp.zeros(a.shape, dtype=xp.bool, device=array_api_compat.device(a))
    best_gain = zero
    best_num = zero
    best_den = zero
    best_z = z_cur
    for k in range(3):
        if k == 0:
            z = z_cur
            allowed = xp.ones_like(found)
        else:
            z = xp.clip(z_lo + (k - 1), qmin, qmax)
            allowed = more
        num = e - z * d
        den = c - (2 * z) * b + (z * z) * a
        valid = allowed & (den > zero) & (num > zero)
        g = num * num / xp.where(valid, den, 1.0)
        take = valid & (~found | (g > best_gain))
        found = found | take
        best_gain = xp.where(take, g, best_gain)
        best_num = xp.where(take, num, best_num)
        best_den = xp.where(take, den, best_den)
        best_z = xp.where(take, z, best_z)
    return found, best_num / xp.where(found, best_den, 1.0), best_z


def refit_part(part, quantile, qmin, qmax, divisor, sym, full_range, weighting, iterations, xp):
    """Scale and zero point (rows, k) of every group of ``part`` (rows, k, size)."""
    cdt = part.dtype
    scale, zp = int_group_params(xp.min(part, axis=-1), xp.max(part, axis=-1), quantile, divisor, sym,
                                 full_range, xp)
    w64, wx, consts = group_constants(part, weighting, xp)
    err, sums = score(part, w64, wx, consts, scale, zp, qmin, qmax, xp)
    active = xp.ones(scale.shape, dtype=xp.bool, device=array_api_compat.device(part))
    for _ in range(iterations):
        ok, s64, z64 = fit(sums, zp, qmin, qmax, sym, xp)
        new_scale = xp.astype(s64, cdt)
        new_zp = zp if sym else xp.astype(z64, cdt)
        active = active & ok & (new_scale != 0) & ~((new_scale == scale) & (new_zp == zp))
        if not bool(xp.any(active)):
            break
        # inactive groups keep their parameters (and must not divide by a zero scale)
        new_scale = xp.where(active, new_scale, scale)
        new_zp = xp.where(active, new_zp, zp)
        new_err, new_sums = score(part, w64, wx, consts, new_scale, new_zp, qmin, qmax, xp)
        active = active & (new_err < err)
        scale = xp.where(active, new_scale, scale)
        zp = xp.where(active, new_zp, zp)
        err = xp.where(active, new_err, err)
        sums = tuple(xp.where(active, n, o) for n, o in zip(new_sums, sums))
    return scale, zp


def refit_int(x, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range, weighting, iterations,
              store_values, xp):
    """Twin of ``_kernels_refit.refit_int``: writes codes (or values) into ``x`` and
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
        scale, zp = refit_part(part, q, qmin, qmax, divisor, sym, full_range, weighting, iterations, xp)
        scales.append(scale)
        zps.append(zp)
        code = int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp)
        values = (code - zp[..., None]) * scale[..., None] if store_values else code
        out.append(xp.reshape(values, (rows, part.shape[1] * part.shape[2])))
    if out:
        x[...] = xp.astype(concat_columns(out, rows, cdt, xp, device), x.dtype)
    return concat_columns(scales, rows, cdt, xp, device), concat_columns(zps, rows, cdt, xp, device)
