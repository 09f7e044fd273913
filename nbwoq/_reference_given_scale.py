"""Array-API reference for quantization with known scales: the twin of
``_kernels_given_scale``. Readability over speed (full-size temporaries)."""

import array_api_compat

from nbwoq._arrays import compute_dtype
from nbwoq._reference_int import in_compute_dtype, parts, store_groups


def _clamp_if(code, qmin, qmax, clamp, xp):
    if not clamp:
        return code
    device = array_api_compat.device(code)
    return xp.clip(code, xp.asarray(qmin, dtype=code.dtype, device=device),
                   xp.asarray(qmax, dtype=code.dtype, device=device))


def quant_w_scale(x, size, scale, zp, qmin, qmax, clamp, xp):
    """Store ``round(x / scale + zp)`` (``round(x / scale)`` when ``zp`` is None) in ``x``."""
    cdt = compute_dtype(x.dtype, xp)
    w, scale, zp = in_compute_dtype((x, scale, zp), cdt, xp)
    out = []
    for part, cut in parts(w, size, xp):
        v = part / scale[:, cut][..., None]
        if zp is not None:
            v = v + zp[:, cut][..., None]
        out.append(_clamp_if(xp.round(v), qmin, qmax, clamp, xp))
    store_groups(x, out, xp)
