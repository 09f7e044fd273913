"""Numba kernels for integer quantization with scales known in advance.

``quant_weight_w_scale`` turns a weight into codes with the caller's scales, using the
reference's formula for it, ``round(x / scale + zp)`` (the zero point added *before*
rounding), optionally clamped (SPEC deviation 2).

Double quantization without ``return_int`` first reads the weight once for its scales
(``int_scales``), quantizes those, then codes every group with its own parameters
(recomputed while the group is in cache: no (rows, n_groups) zero points are kept) and
stores the value dequantized with the double-quantized scale (``requant_int``).

The array-API twin of these kernels is ``_reference_given_scale``; tests hold them equal.
"""

from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._kernels_int import group_minmax, int_code, int_group_params
from nbwoq._llvm import roundeven


@njit_kernel
def int_scales(w, size, n_groups, quantile, divisor, sym, full_range, scale_out):
    """Each group's scale as ``quant_tensor`` computes it, into ``scale_out`` (rows,
    n_groups); reads ``w`` only. ``quantile`` is (1, 1) or (rows, n_groups)."""
    rows, cols = w.shape
    zero = divisor - divisor
    one = divisor / divisor
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    for t in prange(rows * n_groups):
        r = t // n_groups
        g = t - r * n_groups
        start = g * size
        lo, hi = group_minmax(w[r, start:min(start + size, cols)])
        q = quantile[r, g] if per_group else quantile[0, 0]
        scale_out[r, g] = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)[0]


@register_jitable
def clamp_if(code, qmin, qmax, clamp):
    """``code`` clamped to ``[qmin, qmax]`` when ``clamp`` (selects: NaN stays NaN)."""
    if clamp:
        code = qmin if code < qmin else code
        code = qmax if code > qmax else code
    return code


@njit_kernel
def quant_w_scale(w, size, n_groups, scale, zp, has_zp, qmin, qmax, clamp):
    """Store ``round(x / scale + zp)`` (``round(x / scale)`` without ``has_zp``) in place.

    ``scale``/``zp`` are (rows, n_groups); with ``clamp`` the codes are clamped to
    ``[qmin, qmax]``.
    """
    rows, cols = w.shape
    for t in prange(rows * n_groups):
        r = t // n_groups
        g = t - r * n_groups
        start = g * size
        seg = w[r, start:min(start + size, cols)]
        s = scale[r, g]
        if has_zp:
            z = zp[r, g]
            for i in range(seg.shape[0]):
                seg[i] = encode(clamp_if(roundeven(decode(seg[i]) / s + z), qmin, qmax, clamp), w)
        else:
            # No zero point: nothing is added, so a -0.0 code stays -0.0 as in the reference.
            for i in range(seg.shape[0]):
                seg[i] = encode(clamp_if(roundeven(decode(seg[i]) / s), qmin, qmax, clamp), w)


@njit_kernel
def requant_int(w, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range, out_scale):
    """Quantize each group as ``quant_tensor`` does (its own scale and zero point, from
    its min and max) and store ``(code - zp) * out_scale[r, g]`` in place."""
    rows, cols = w.shape
    zero = divisor - divisor
    one = divisor / divisor
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    for t in prange(rows * n_groups):
        r = t // n_groups
        g = t - r * n_groups
        start = g * size
        seg = w[r, start:min(start + size, cols)]
        lo, hi = group_minmax(seg)
        q = quantile[r, g] if per_group else quantile[0, 0]
        scale, zp = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)
        m = out_scale[r, g]
        for i in range(seg.shape[0]):
            code = int_code(decode(seg[i]), scale, zp, qmin, qmax)
            seg[i] = encode((code - zp) * m, w)
