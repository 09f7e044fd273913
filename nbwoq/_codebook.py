"""4-bit codebook quantization: one dispatch over the Numba kernel and its reference twin."""

import functools

import array_api_compat
import numpy as np

from nbwoq import _arrays, _integer, _kernels_codebook, _reference_codebook
from nbwoq._kernels_codebook import N_MIDS, N_VALUES
from nbwoq._layout import group_layout
from nbwoq._tables import FLOAT_MAPPING, INT_MAPPING, midpoints

_STORE_MODES = {
    "nothing": _kernels_codebook.STORE_NOTHING,
    "value": _kernels_codebook.STORE_VALUE,
    "scaled": _kernels_codebook.STORE_SCALED,
    "out_scaled": _kernels_codebook.STORE_OUT_SCALED,
}


@functools.lru_cache(maxsize=None)
def kernel_tables(name, compute_dtype):
    """``(mids, levels, codes, max_level)`` of codebook ``name`` for the kernels.

    Everything is rounded once to ``compute_dtype`` (as the reference rounds its Python
    floats to the tensor's type): ``mids`` padded to ``N_MIDS`` with ``+inf`` (no value
    exceeds it, so the padding never picks a level), ``levels``/``codes`` padded to
    ``N_VALUES`` by repeating the last entry. Read-only arrays.
    """
    dt = np.dtype(compute_dtype)
    levels = np.asarray(FLOAT_MAPPING[name], dtype=np.float64)
    mids = np.full(N_MIDS, np.inf, dtype=dt)
    mids[: levels.size - 1] = midpoints(levels).astype(dt)
    padded = []
    for table in (levels, np.asarray(INT_MAPPING[name], dtype=np.float64)):
        out = np.full(N_VALUES, table[-1], dtype=dt)
        out[: table.size] = table.astype(dt)
        padded.append(out)
    max_level = dt.type(max(FLOAT_MAPPING[name]))
    for a in (mids, *padded):
        a.setflags(write=False)
    return mids, padded[0], padded[1], max_level


def quantize_codebook(weight, xp, name, group_size, quantile, values="levels", store="scaled",
                      scale=None, keep_scale=False, out_scale=None, check=True):
    """Quantize ``weight`` (validated) to codebook ``name`` in place.

    ``quantile``: validated by ``_integer.quantile_argument`` for this layout (ignored
    with a given ``scale``). ``values``: ``"levels"`` or ``"codes"`` (``INT_MAPPING``),
    what each element becomes before any scaling. ``store``: ``"nothing"``, ``"value"``,
    ``"scaled"`` (times the group's scale) or ``"out_scaled"`` (times ``out_scale``).
    ``scale``: None (from each group's absmax) or a validated (rows, n_groups) array.
    ``out_scale``: (rows, n_groups), only for ``"out_scaled"``.

    Returns the scale (rows, n_groups) in the compute dtype when ``keep_scale`` and it
    was computed, else None.
    """
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    if check:
        _integer.check_finite(weight, xp)
    if xp is not None:
        cdt = _arrays.compute_dtype(weight.dtype, xp)
        mids, levels, codes, max_level = kernel_tables(name, "float64" if cdt == xp.float64 else "float32")
        device = array_api_compat.device(weight)
        # Python floats of the already-rounded tables: exact in the compute dtype.
        table = xp.asarray((codes if values == "codes" else levels).tolist(), dtype=cdt, device=device)
        s = _reference_codebook.quant_codebook(
            weight, size, n_groups, quantile, xp.asarray(mids.tolist(), dtype=cdt, device=device), table,
            float(max_level), scale, out_scale, store, xp,
        )
        return s if keep_scale and scale is None else None
    cdt = _arrays.compute_dtype(weight.dtype)
    mids, levels, codes, max_level = kernel_tables(name, cdt.name)
    if isinstance(quantile, float):
        q = np.full((1, 1), quantile, dtype=cdt)
    else:
        q = np.ascontiguousarray(quantile, dtype=cdt)
    if scale is not None:
        scale_mode = _kernels_codebook.SCALE_GIVEN
        scale_arr = np.ascontiguousarray(scale, dtype=cdt)
    elif keep_scale:
        scale_mode = _kernels_codebook.SCALE_KEEP
        scale_arr = np.empty((rows, n_groups), dtype=cdt)
    else:
        scale_mode = _kernels_codebook.SCALE_COMPUTE
        scale_arr = np.empty((1, 1), dtype=cdt)
    out_arr = np.empty((1, 1), dtype=cdt) if out_scale is None else np.ascontiguousarray(out_scale, dtype=cdt)
    if rows and n_groups:
        _kernels_codebook.quant_codebook(
            _arrays.kernel_view(weight), size, n_groups, q, mids, codes if values == "codes" else levels,
            max_level, scale_arr, out_arr, scale_mode, _STORE_MODES[store],
        )
    return scale_arr if scale_mode == _kernels_codebook.SCALE_KEEP else None
