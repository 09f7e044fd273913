"""Integer quantization with known scales: one dispatch over the Numba kernels of
``_kernels_given_scale`` and their reference twins."""

import numpy as np

from nbwoq import _arrays, _integer, _kernels_given_scale, _reference_given_scale
from nbwoq._layout import group_layout


def _quantile(quantile, cdt):
    return np.full((1, 1), quantile, dtype=cdt) if isinstance(quantile, float) else np.ascontiguousarray(quantile, cdt)


def int_scales(weight, xp, bits, group_size, sym, full_range, quantile):
    """Each group's scale as ``quant_tensor`` computes it, reading ``weight`` only; a
    (rows, n_groups) array in the compute dtype."""
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    _, _, divisor = _integer.int_range(bits, sym, full_range)
    if xp is not None:
        return _reference_given_scale.int_scales(weight, size, n_groups, quantile, float(divisor), sym, full_range, xp)
    cdt = _arrays.compute_dtype(weight.dtype)
    scale = np.empty((rows, n_groups), dtype=cdt)
    if rows and n_groups:
        _kernels_given_scale.int_scales(
            _arrays.kernel_view(weight), size, n_groups, _quantile(quantile, cdt), cdt.type(divisor), sym,
            full_range, scale,
        )
    return scale


def _kernel_params(weight, *params):
    cdt = _arrays.compute_dtype(weight.dtype)
    return cdt, [np.ascontiguousarray(p, dtype=cdt) for p in params]


def quant_w_scale(weight, xp, group_size, scale, zp, qrange):
    """Store ``round(w / scale + zp)`` (no zp: ``round(w / scale)``) in ``weight``, clamped
    to ``qrange = (qmin, qmax)`` unless it is None. ``scale``/``zp`` are validated
    (rows, n_groups) arrays of the weight's kind."""
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    clamp = qrange is not None
    qmin, qmax = qrange if clamp else (0, 0)
    if xp is not None:
        _reference_given_scale.quant_w_scale(weight, size, n_groups, scale, zp, float(qmin), float(qmax), clamp, xp)
        return
    cdt, (s,) = _kernel_params(weight, scale)
    z = s if zp is None else np.ascontiguousarray(zp, dtype=cdt)
    if rows and n_groups:
        _kernels_given_scale.quant_w_scale(
            _arrays.kernel_view(weight), size, n_groups, s, z, zp is not None, cdt.type(qmin), cdt.type(qmax), clamp
        )


def requant_int(weight, xp, bits, group_size, sym, full_range, quantile, out_scale):
    """Quantize ``weight`` as ``quant_tensor`` does and store ``(code - zp) * out_scale``
    in place (``out_scale``: (rows, n_groups))."""
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    qmin, qmax, divisor = _integer.int_range(bits, sym, full_range)
    if xp is not None:
        _reference_given_scale.requant_int(weight, size, n_groups, quantile, float(qmin), float(qmax), float(divisor),
                                           sym, full_range, out_scale, xp)
        return
    cdt, (m,) = _kernel_params(weight, out_scale)
    if rows and n_groups:
        _kernels_given_scale.requant_int(
            _arrays.kernel_view(weight), size, n_groups, _quantile(quantile, cdt), cdt.type(qmin), cdt.type(qmax),
            cdt.type(divisor), sym, full_range, m,
        )
