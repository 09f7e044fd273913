"""Array-API reference for the 4-bit codebooks: the twin of ``_kernels_codebook``.

Written once against the Array API standard, it runs on any conforming array (torch on
any device, CuPy, ``array_api_strict``) without leaving that array's device, and it is
the oracle the Numba kernels are tested against. Readability over speed, but no
``(N, levels)`` distance matrix: the level index is a count of midpoint comparisons,
one full-size pass per midpoint.
"""

import array_api_compat

from nbwoq._arrays import compute_dtype
from nbwoq._reference_int import concat_columns, in_compute_dtype, parts, store_groups
from nbwoq._tables import ZERO_INDEX


def codebook_scale(absmax, quantile, max_level):
    """``absmax * quantile / max_level`` (arrays or scalars), the reference's op order."""
    return absmax * quantile / max_level


def nearest_level(v, mids, xp):
    """Index of the level the midpoint rule picks for each element of ``v``.

    ``mids`` is a 1-D array of ascending midpoints in ``v``'s dtype (padding with
    ``+inf`` is allowed). Level 0 when ``v <= mids[0]``, ``i`` when
    ``mids[i-1] < v <= mids[i]``, the last when ``v > mids[-1]``; NaN gives
    ``ZERO_INDEX`` (the level 0.0, where the reference's ``0 / 0`` lands). Returns an
    int32 array of ``v``'s shape.
    """
    count = xp.zeros(v.shape, dtype=xp.int32, device=array_api_compat.device(v))
    for i in range(mids.shape[0]):
        m = mids[i]
        # Below the zero level "not <=" counts NaN as above; from it on "v > m" does not.
        hit = ~(v <= m) if i < ZERO_INDEX else (v > m)
        count = count + xp.astype(hit, xp.int32)
    return count


def _take(values, index, xp):
    """``values[index]`` for an index array of any shape."""
    flat = xp.take(values, xp.reshape(index, (-1,)))
    return xp.reshape(flat, index.shape)


def quant_codebook(x, size, quantile, mids, values, max_level, scale, out_scale, store, xp):
    """Quantize ``x`` (rows, cols) to a codebook in place; returns the scale (rows, n_groups).

    ``quantile`` is a Python float or an array (rows, n_groups). ``mids`` and ``values``
    are 1-D arrays in the compute dtype: the midpoints and what to store per level.
    ``scale`` is None (computed from each group's absmax) or a given (rows, n_groups)
    array. ``store`` (``_codecs.STORE``) is ``"nothing"``, ``"unscaled"``, ``"scaled"``
    (times the group's scale) or ``"out_scaled"`` (times ``out_scale[r, g]``).
    """
    rows, cols = x.shape
    cdt = compute_dtype(x.dtype, xp)
    w, quantile, scale, out_scale = in_compute_dtype((x, quantile, scale, out_scale), cdt, xp)
    device = array_api_compat.device(x)
    max_level = xp.asarray(max_level, dtype=cdt, device=device)
    out, scales = [], []
    for part, cut in parts(w, size, xp):
        if scale is None:
            q = quantile if isinstance(quantile, float) else quantile[:, cut]
            s = codebook_scale(xp.max(xp.abs(part), axis=-1), q, max_level)
        else:
            s = scale[:, cut]
        scales.append(s)
        if store == "nothing":
            continue
        value = _take(values, nearest_level(part / s[..., None], mids, xp), xp)
        if store == "scaled":
            value = value * s[..., None]
        elif store == "out_scaled":
            value = value * out_scale[:, cut][..., None]
        out.append(value)
    store_groups(x, out, xp)
    return concat_columns(scales, rows, cdt, xp, device)
