"""Array-API reference for quantization with known scales: the twin of
``_kernels_given_scale``. Readability over speed (full-size temporaries)."""

import array_api_compat

from nbwoq._reference_int import int_code, int_group_params, split_groups


def _compute_dtype(x, xp):
    return xp.float64 if x.dtype == xp.float64 else xp.float32


def _parts(w, size, n_groups, xp):
    """``(part, column slice of the (rows, n_groups) parameters)`` for body and tail."""
    body, tail = split_groups(w, size, xp)
    if body.shape[1]:
        yield body, slice(0, body.shape[1])
    if tail is not None:
        yield tail, slice(n_groups - 1, n_groups)


def _concat(pieces, rows, xp, dtype, device):
    if not pieces:
        return xp.zeros((rows, 0), dtype=dtype, device=device)
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=1)


def _params(w, size, n_groups, quantile, divisor, sym, full_range, xp):
    """``(part, cut, scale, zp)`` per part of ``w`` (compute dtype), as quant_tensor."""
    for part, cut in _parts(w, size, n_groups, xp):
        q = quantile if isinstance(quantile, float) else quantile[:, cut]
        scale, zp = int_group_params(xp.min(part, axis=-1), xp.max(part, axis=-1), q, divisor, sym, full_range, xp)
        yield part, cut, scale, zp


def _prepare(x, quantile, xp):
    cdt = _compute_dtype(x, xp)
    if not isinstance(quantile, float):
        quantile = xp.astype(quantile, cdt)
    return cdt, xp.astype(x, cdt), quantile


def int_scales(x, size, n_groups, quantile, divisor, sym, full_range, xp):
    """Each group's scale as ``quant_tensor`` computes it, (rows, n_groups)."""
    cdt, w, quantile = _prepare(x, quantile, xp)
    scales = [s for _, _, s, _ in _params(w, size, n_groups, quantile, divisor, sym, full_range, xp)]
    return _concat(scales, x.shape[0], xp, cdt, array_api_compat.device(x))


def _clamp_if(code, qmin, qmax, clamp, xp):
    if not clamp:
        return code
    device = array_api_compat.device(code)
    return xp.clip(code, xp.asarray(qmin, dtype=code.dtype, device=device),
                   xp.asarray(qmax, dtype=code.dtype, device=device))


def quant_w_scale(x, size, n_groups, scale, zp, qmin, qmax, clamp, xp):
    """Store ``round(x / scale + zp)`` (``round(x / scale)`` when ``zp`` is None) in ``x``."""
    rows = x.shape[0]
    cdt = _compute_dtype(x, xp)
    w = xp.astype(x, cdt)
    scale = xp.astype(scale, cdt)
    zp = None if zp is None else xp.astype(zp, cdt)
    out = []
    for part, cut in _parts(w, size, n_groups, xp):
        v = part / scale[:, cut][..., None]
        if zp is not None:
            v = v + zp[:, cut][..., None]
        # explicit width: -1 is ambiguous when rows == 0
        out.append(xp.reshape(_clamp_if(xp.round(v), qmin, qmax, clamp, xp), (rows, part.shape[1] * part.shape[2])))
    if out:
        x[...] = xp.astype(_concat(out, rows, xp, cdt, array_api_compat.device(x)), x.dtype)


def requant_int(x, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range, out_scale, xp):
    """Quantize each group of ``x`` as ``quant_tensor`` does and store
    ``(code - zp) * out_scale`` in ``x``."""
    rows = x.shape[0]
    cdt, w, quantile = _prepare(x, quantile, xp)
    out_scale = xp.astype(out_scale, cdt)
    out = []
    for part, cut, scale, zp in _params(w, size, n_groups, quantile, divisor, sym, full_range, xp):
        z = zp[..., None]
        code = int_code(part, scale[..., None], z, qmin, qmax, xp)
        out.append(xp.reshape((code - z) * out_scale[:, cut][..., None], (rows, part.shape[1] * part.shape[2])))
    if out:
        x[...] = xp.astype(_concat(out, rows, xp, cdt, array_api_compat.device(x)), x.dtype)
