"""Array-API reference for quantization with known scales: the twin of
``_kernels_given_scale``. Readability over speed (full-size temporaries)."""

import array_api_compat

from nbwoq._arrays import compute_dtype
from nbwoq._reference_int import concat_columns, parts


def _clamp_if(code, qmin, qmax, clamp, xp):
    if not clamp:
        return code
    device = array_api_compat.device(code)
    return xp.clip(code, xp.asarray(qmin, dtype=code.dtype, device=device),
                   xp.asarray(qmax, dtype=code.dtype, device=device))


def quant_w_scale(x, size, n_groups, scale, zp, qmin, qmax, clamp, xp):
    """Store ``round(x / scale + zp)`` (``round(x / scale)`` when ``zp`` is None) in ``x``."""
    rows = x.shape[0]
    cdt = compute_dtype(x.dtype, xp)
    w = xp.astype(x, cdt)
    scale = xp.astype(scale, cdt)
    zp = None if zp is None else xp.astype(zp, cdt)
    out = []
    for part, cut in parts(w, size, n_groups, xp):
        v = part / scale[:, cut][..., None]
        if zp is not None:
            v = v + zp[:, cut][..., None]
        # explicit width: -1 is ambiguous when rows == 0
        out.append(xp.reshape(_clamp_if(xp.round(v), qmin, qmax, clamp, xp), (rows, part.shape[1] * part.shape[2])))
    if out:
        x[...] = xp.astype(concat_columns(out, rows, cdt, xp, array_api_compat.device(x)), x.dtype)
