"""Array-API reference for the dual-axis scale search: the twin of ``_kernels_dual``.

Every group of a part (the full groups, then the tail) at once, one candidate at a
time; the float64 error sums run over the group's elements in the kernel's lane order
(``_reference_refit.lane_sum``), so both paths give the same bits. The quotient is
rounded to float32 first and then to the weight's dtype, as the kernel's ``encode``
does (for float32 and float64 weights that is one rounding). Readability over speed.
"""

from nbwoq._arrays import compute_dtype
from nbwoq._reference_int import int_code, int_group_params, parts
from nbwoq._reference_refit import group_constants, lane_sum


def _stored(values, dtype, xp):
    """``values`` (float64 or compute type) rounded as the kernel's ``encode`` into a
    weight of ``dtype``: halves through float32."""
    if dtype not in (xp.float32, xp.float64):
        values = xp.astype(values, xp.float32)
    return xp.astype(values, dtype)


def dual_errors(w, scales, colw, size, qmin, qmax, divisor, sym, full_range, weighting, xp):
    """Twin of ``_kernels_dual.dual_errors``: float64 array (n_cand, rows, n_groups)."""
    cdt = compute_dtype(w.dtype, xp)
    x64 = xp.astype(w, xp.float64)
    out = []
    for k in range(scales.shape[0]):
        s = scales[k, :]
        y = xp.astype(_stored(x64 / s[None, :], w.dtype, xp), cdt)
        pieces = []
        for (part, cut), (orig, _), (spart, _), (cpart, _) in zip(
                parts(y, size, xp), parts(xp.astype(w, cdt), size, xp),
                parts(xp.broadcast_to(s[None, :], w.shape), size, xp),
                parts(xp.broadcast_to(colw[None, :], w.shape), size, xp)):
            wt, _, _ = group_constants(orig, weighting, xp)
            wt = wt * cpart
            scale, zp = int_group_params(xp.min(part, axis=-1), xp.max(part, axis=-1), 1.0, divisor, sym,
                                         full_range, xp)
            code = int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp)
            deq = xp.astype(_stored((code - zp[..., None]) * scale[..., None], w.dtype, xp), xp.float64)
            d = xp.astype(orig, xp.float64) - deq * spart
            pieces.append(lane_sum(wt * d * d, xp))
        out.append(pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=1))
    return xp.stack(out, axis=0)


def scaled_moments(m, v, xp):
    """Twin of ``_kernels_dual.scaled_moments``: per row, the mean and mean square of
    ``m * v[None, :]`` (float64), summed in the lane order."""
    a = m * v[None, :]
    n = m.shape[1]
    return lane_sum(a, xp) / n, lane_sum(a * a, xp) / n
