"""Array-API reference for integer group quantization: the twin of ``_kernels_int``.

Written once against the Array API standard, it runs on any conforming array (torch on
any device, CuPy, ``array_api_strict``) without leaving that array's device, and it is
the oracle the Numba kernels are tested against. Readability over speed: it builds
full-size temporaries, which the kernels never do.
"""


def _compute_dtype(x, xp):
    return xp.float64 if x.dtype == xp.float64 else xp.float32


def int_group_params(lo, hi, quantile, divisor, sym, full_range, xp):
    """Vectorized twin of ``_kernels_int.int_group_params`` over arrays of group stats."""
    dt = lo.dtype
    zero = xp.zeros_like(lo)
    one = xp.ones_like(lo)
    if sym:
        ahi = xp.abs(hi)
        alo = xp.abs(lo)
        wmax = xp.maximum(ahi, alo) * quantile
        wmax = xp.where(wmax == zero, one, wmax)
        scale = wmax / xp.asarray(divisor, dtype=dt)
        if full_range:
            scale = xp.where(ahi > alo, -scale, scale)
        return scale, zero
    wmin = xp.minimum(lo, zero) * quantile
    wmax = xp.maximum(hi, zero) * quantile
    both = (wmin == zero) & (wmax == zero)
    wmin = xp.where(both, -one, wmin)
    wmax = xp.where(both, one, wmax)
    scale = (wmax - wmin) / xp.asarray(divisor, dtype=dt)
    zp = xp.round(-wmin / scale)
    return scale, zp


def int_code(x, scale, zp, qmin, qmax, xp):
    """``clamp(round(x / scale) + zp, qmin, qmax)``, NaN propagating."""
    dt = x.dtype
    return xp.clip(xp.round(x / scale) + zp, xp.asarray(qmin, dtype=dt), xp.asarray(qmax, dtype=dt))


def split_groups(w, size, xp):
    """``w`` (rows, cols) as its full groups (rows, k, size) and its tail (rows, 1, t) or None."""
    rows, cols = w.shape
    full = cols // size
    split = full * size
    body = xp.reshape(w[:, :split], (rows, full, size))
    tail = xp.reshape(w[:, split:], (rows, 1, cols - split)) if split < cols else None
    return body, tail


def quant_int(x, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range, write_codes, xp):
    """Quantize ``x`` in place; returns ``(scale, zp)`` of shape (rows, n_groups).

    ``quantile`` is a Python float or an array of shape (rows, n_groups).
    """
    rows, cols = x.shape
    cdt = _compute_dtype(x, xp)
    w = xp.astype(x, cdt)
    if not isinstance(quantile, float):
        quantile = xp.astype(quantile, cdt)
    out, scales, zps = [], [], []
    body, tail = split_groups(w, size, xp)
    for k, part in enumerate((body, tail)):
        if part is None or part.shape[1] == 0:
            continue
        if isinstance(quantile, float):
            q = quantile
        else:
            q = quantile[:, : part.shape[1]] if k == 0 else quantile[:, n_groups - 1 :]
        lo = xp.min(part, axis=-1)
        hi = xp.max(part, axis=-1)
        scale, zp = int_group_params(lo, hi, q, divisor, sym, full_range, xp)
        code = int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp)
        values = code if write_codes else (code - zp[..., None]) * scale[..., None]
        # explicit width: -1 is ambiguous when rows == 0
        out.append(xp.reshape(values, (rows, part.shape[1] * part.shape[2])))
        scales.append(scale)
        zps.append(zp)
    if not out:
        empty = xp.zeros((rows, 0), dtype=cdt)
        return empty, empty
    result = out[0] if len(out) == 1 else xp.concat(out, axis=1)
    x[...] = xp.astype(result, x.dtype)
    scale = scales[0] if len(scales) == 1 else xp.concat(scales, axis=1)
    zp = zps[0] if len(zps) == 1 else xp.concat(zps, axis=1)
    return scale, zp


def finite_by_row(x, xp):
    """Per-row ``all(isfinite)`` as a NumPy-convertible bool array."""
    return xp.all(xp.isfinite(x), axis=1)
