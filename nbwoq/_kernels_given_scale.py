"""Numba kernels for integer quantization with scales known in advance.

``quant_weight_w_scale`` turns a weight into codes with the caller's scales, using the
reference's formula for it, ``round(x / scale + zp)`` (the zero point added *before*
rounding), optionally clamped (SPEC deviation 2).

(Double quantization's integer passes, scales only and values dequantized with the
double-quantized scales, are ``_kernels_int.quant_int``'s ``STORE_NOTHING`` and
``STORE_OUT_SCALED`` modes, ``_codecs``.)

The array-API twin of these kernels is ``_reference_given_scale``; tests hold them equal.
"""

from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode, encode
from nbwoq._config import njit_kernel
from nbwoq._layout import group_segment
from nbwoq._llvm import roundeven


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
    rows = w.shape[0]
    for t in prange(rows * n_groups):
        r, g, seg = group_segment(w, t, n_groups, size)
        s = scale[r, g]
        if has_zp:
            z = zp[r, g]
            for i in range(seg.shape[0]):
                seg[i] = encode(clamp_if(roundeven(decode(seg[i]) / s + z), qmin, qmax, clamp), w)
        else:
            # No zero point: nothing is added, so a -0.0 code stays -0.0 as in the reference.
            for i in range(seg.shape[0]):
                seg[i] = encode(clamp_if(roundeven(decode(seg[i]) / s), qmin, qmax, clamp), w)
