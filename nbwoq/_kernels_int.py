"""Numba kernels for integer group quantization (asym, sym, full-range; 1-16 bits).

Rows are split into groups by ``_layout.group_layout``; kernels take the effective group
size and group count as runtime arguments, so one compiled kernel serves every shape
and bit width. Arithmetic follows the reference's order in the compute type (float32,
or float64 for float64 weights); fastmath stays off wherever a code is decided.

The array-API twin of these kernels is ``_reference_int``; tests hold them equal.
"""

from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import STORE_NOTHING, STORE_OUT_SCALED, STORE_UNSCALED, decode, encode
from nbwoq._config import njit_kernel
from nbwoq._layout import group_segment
from nbwoq._llvm import fmax_finite, fmaximum, fmin_finite, fminimum, roundeven


@register_jitable(inline="always")
def group_minmax(seg, finite):
    """Min and max of the group ``seg`` (1-D, non-empty) in the compute type.

    ``finite`` says a scan has already cleared the data of NaN and Inf: then the plain
    min/max instructions serve. Otherwise NaN propagates (a group holding a NaN has NaN
    statistics, as ``torch.min``/``torch.max`` give).
    """
    lo = decode(seg[0])
    hi = lo
    # Index from 0 over a slice: LLVM can then prove the index non-negative, drop
    # Numba's negative-index wraparound and vectorize (otherwise it gathers).
    if finite:
        for i in range(seg.shape[0]):
            x = decode(seg[i])
            lo = fmin_finite(lo, x)
            hi = fmax_finite(hi, x)
    else:
        for i in range(seg.shape[0]):
            x = decode(seg[i])
            lo = fminimum(lo, x)
            hi = fmaximum(hi, x)
    return lo, hi


@register_jitable(inline="always")
def int_group_params(lo, hi, quantile, divisor, sym, full_range, zero, one):
    """Scale and zero point of one group from its min and max.

    asym: ``wmin = min(lo, 0) * q``, ``wmax = max(hi, 0) * q`` (both zero -> -1, +1),
    ``scale = (wmax - wmin) / divisor``, ``zp = round(-wmin / scale)``.
    sym: ``wmax = max(|hi|, |lo|) * q`` (zero -> 1), ``scale = wmax / divisor``; with
    ``full_range`` the scale is negated when ``|hi| > |lo|``. Its zero point is 0.
    """
    if sym:
        ahi = abs(hi)
        alo = abs(lo)
        wmax = fmaximum(ahi, alo) * quantile
        if wmax == zero:
            wmax = one
        scale = wmax / divisor
        if full_range and ahi > alo:
            scale = -scale
        return scale, zero
    wmin = fminimum(lo, zero) * quantile
    wmax = fmaximum(hi, zero) * quantile
    if wmin == zero and wmax == zero:
        wmin = -one
        wmax = one
    scale = (wmax - wmin) / divisor
    zp = roundeven(-wmin / scale)
    return scale, zp


# Not inlined at Numba-IR level (its selects trip Numba's SSA checks there); LLVM
# inlines it anyway.
@register_jitable
def int_code(x, scale, zp, qmin, qmax):
    """``clamp(round(x / scale) + zp, qmin, qmax)``.

    The clamp is written as two selects: they vectorize to compare-and-blend, and a NaN
    fails both comparisons and stays NaN, as in ``torch.clamp``.
    """
    code = roundeven(x / scale) + zp
    code = qmin if code < qmin else code
    return qmax if code > qmax else code


@njit_kernel
def quant_int(w, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range,
              store, keep_params, scale_out, zp_out, out_scale, finite):
    """Quantize ``w`` in place, one group at a time while it sits in cache.

    ``quantile`` is (1, 1) for one clip ratio or (rows, n_groups) for one per group.
    ``store`` is one of ``_codecs``' ``STORE_*`` constants; ``out_scale`` (rows, n_groups) is
    read only by ``STORE_OUT_SCALED``. ``keep_params`` writes each group's scale and
    zero point into ``scale_out``/``zp_out`` (rows, n_groups). ``finite``: the data
    is known to hold no NaN or Inf (see ``group_minmax``).
    """
    rows = w.shape[0]
    # Constants in the compute type without Python literals (a literal would be float64).
    zero = divisor - divisor
    one = divisor / divisor
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    for t in prange(rows * n_groups):
        r, g, seg = group_segment(w, t, n_groups, size)
        lo, hi = group_minmax(seg, finite)
        q = quantile[r, g] if per_group else quantile[0, 0]
        scale, zp = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)
        if keep_params:
            scale_out[r, g] = scale
            zp_out[r, g] = zp
        if store == STORE_UNSCALED:
            for i in range(seg.shape[0]):
                seg[i] = encode(int_code(decode(seg[i]), scale, zp, qmin, qmax), w)
        elif store != STORE_NOTHING:
            m = out_scale[r, g] if store == STORE_OUT_SCALED else scale
            for i in range(seg.shape[0]):
                code = int_code(decode(seg[i]), scale, zp, qmin, qmax)
                seg[i] = encode((code - zp) * m, w)
