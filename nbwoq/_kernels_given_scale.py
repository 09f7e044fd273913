"""Numba kernels for integer quantization with scales (and zero points) known in advance.

Two callers need them. ``quant_weight_w_scale`` turns a weight into codes with the
caller's scales, using the reference's formula for it, ``round(x / scale + zp)`` (the
zero point added *before* rounding), optionally clamped (SPEC deviation 2). Double
quantization first reads the weight once for its scales (``int_params``), quantizes
those, then codes every group with its original scale and zero point (``quant_tensor``'s
formula, so the codes are the ones ``quant_tensor`` stores) and dequantizes it with the
double-quantized scale, in one read-and-write pass.

The array-API twin of these kernels is ``_reference_given_scale``; tests hold them equal.
"""

from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._kernels_int import group_minmax, int_code, int_group_params
from nbwoq._llvm import roundeven


@njit_kernel
def int_params(w, size, n_groups, quantile, divisor, sym, full_range, scale_out, zp_out):
    """Each group's scale and zero point as ``quant_tensor`` computes them; reads only.

    ``quantile`` is (1, 1) or (rows, n_groups); ``scale_out``/``zp_out`` (rows,
    n_groups) receive the parameters (the zero point is 0 for sym).
    """
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
        scale_out[r, g], zp_out[r, g] = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)


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
def requant_int(w, size, n_groups, scale, zp, qmin, qmax, out_scale):
    """Code each group with its own ``scale``/``zp`` as ``quant_tensor`` does, then store
    ``(code - zp) * out_scale`` (all (rows, n_groups); zp is 0 for sym)."""
    rows, cols = w.shape
    for t in prange(rows * n_groups):
        r = t // n_groups
        g = t - r * n_groups
        start = g * size
        seg = w[r, start:min(start + size, cols)]
        s = scale[r, g]
        z = zp[r, g]
        m = out_scale[r, g]
        for i in range(seg.shape[0]):
            code = int_code(decode(seg[i]), s, z, qmin, qmax)
            seg[i] = encode((code - z) * m, w)
