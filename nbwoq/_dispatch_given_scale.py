"""Integer quantization with known scales: one dispatch over the Numba kernels of
``_kernels_given_scale`` and their reference twins."""

import numpy as np

from nbwoq import _arrays, _kernels_given_scale, _reference_given_scale
from nbwoq._layout import group_layout


def quant_w_scale(weight, xp, group_size, scale, zp, qrange):
    """Store ``round(w / scale + zp)`` (no zp: ``round(w / scale)``) in ``weight``, clamped
    to ``qrange = (qmin, qmax)`` unless it is None. ``scale``/``zp`` are validated
    (rows, n_groups) arrays of the weight's kind."""
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    clamp = qrange is not None
    qmin, qmax = qrange if clamp else (0, 0)
    if xp is not None:
        _reference_given_scale.quant_w_scale(weight, size, scale, zp, float(qmin), float(qmax), clamp, xp)
        return
    cdt = _arrays.compute_dtype(weight.dtype)
    s = _arrays.kernel_param(scale, cdt)
    z = s if zp is None else _arrays.kernel_param(zp, cdt)
    if rows and n_groups:
        _kernels_given_scale.quant_w_scale(
            _arrays.kernel_view(weight), size, n_groups, s, z, zp is not None, cdt.type(qmin), cdt.type(qmax), clamp
        )
