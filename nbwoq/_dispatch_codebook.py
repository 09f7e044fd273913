"""4-bit codebook quantization: one dispatch over the Numba kernel and its reference twin."""

import numpy as np

from nbwoq import _arrays, _kernels_codebook, _reference_codebook, _validate
from nbwoq._codecs import STORE
from nbwoq._layout import group_layout
from nbwoq._tables import kernel_tables, reference_tables


def quantize_codebook(weight, xp, name, group_size, quantile, values="levels", store="scaled",
                      scale=None, keep_scale=False, out_scale=None, check=True):
    """Quantize ``weight`` (validated) to codebook ``name`` in place.

    ``quantile``: validated by ``_validate.quantile`` for this layout (ignored
    with a given ``scale``). ``values``: ``"levels"`` or ``"codes"`` (``INT_MAPPING``),
    what each element becomes before any scaling. ``store`` (``_codecs.STORE``): ``"nothing"``, ``"unscaled"``,
    ``"scaled"`` (times the group's scale) or ``"out_scaled"`` (times ``out_scale``).
    ``scale``: None (from each group's absmax) or a validated (rows, n_groups) array.
    ``out_scale``: (rows, n_groups), only for ``"out_scaled"``.

    Returns the scale (rows, n_groups) in the compute dtype when ``keep_scale`` and it
    was computed, else None.
    """
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    if check:
        _validate.check_finite(weight, xp)
    if xp is not None:
        mids, levels, codes, max_level = reference_tables(name, weight, xp)
        s = _reference_codebook.quant_codebook(
            weight, size, quantile, mids, codes if values == "codes" else levels, max_level, scale,
            out_scale, store, xp,
        )
        return s if keep_scale and scale is None else None
    cdt = _arrays.compute_dtype(weight.dtype)
    mids, levels, codes, max_level = kernel_tables(name, cdt.name)
    q = _arrays.kernel_param(quantile, cdt)
    if scale is not None:
        scale_mode = _kernels_codebook.SCALE_GIVEN
        scale_arr = _arrays.kernel_param(scale, cdt)
    elif keep_scale:
        scale_mode = _kernels_codebook.SCALE_KEEP
        scale_arr = np.empty((rows, n_groups), dtype=cdt)
    else:
        scale_mode = _kernels_codebook.SCALE_COMPUTE
        scale_arr = _arrays.kernel_param(None, cdt)
    out_arr = _arrays.kernel_param(out_scale, cdt)
    if rows and n_groups:
        _kernels_codebook.quant_codebook(
            _arrays.kernel_view(weight), size, n_groups, q, mids, codes if values == "codes" else levels,
            max_level, scale_arr, out_arr, scale_mode, STORE[store],
        )
    return scale_arr if scale_mode == _kernels_codebook.SCALE_KEEP else None
