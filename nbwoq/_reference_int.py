"""Array-API reference for integer group quantization: the twin of ``_kernels_int``.

Written once against the Array API standard, it runs on any conforming array (torch on
any device, CuPy, ``array_api_strict``) without leaving that array's device, and it is
the oracle the Numba kernels are tested against. Readability over speed: it builds
full-size temporaries, which the kernels never do.
"""

import array_api_compat

from nbwoq._arrays import compute_dtype


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


def in_compute_dtype(values, cdt, xp):
    """Each array of ``values`` cast to the compute dtype ``cdt``; Python floats (a
    single clip ratio) and None pass through."""
    return [v if v is None or isinstance(v, float) else xp.astype(v, cdt) for v in values]


def parts(w, size, xp):
    """The one home of the reference twins' "full groups, then the tail" rule.

    Yields ``(part, cut)`` for the full groups of ``w`` (rows, cols), then for its
    shorter last group if any (``_layout.group_layout``'s rule, ``size`` its group
    size): ``part`` is (rows, k, group width), ``cut`` the slice of the (rows, n_groups)
    parameter arrays that belongs to it. Nothing for zero columns.
    """
    rows, cols = w.shape
    full = cols // size
    split = full * size
    if full:
        yield xp.reshape(w[:, :split], (rows, full, size)), slice(0, full)
    if split < cols:
        yield xp.reshape(w[:, split:], (rows, 1, cols - split)), slice(full, full + 1)


def concat_columns(pieces, rows, dtype, xp, device):
    """Pieces (rows, k_i) side by side; an empty (rows, 0) array for no pieces."""
    if not pieces:
        return xp.zeros((rows, 0), dtype=dtype, device=device)
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=1)


def store_groups(x, pieces, xp):
    """Write ``pieces`` (one (rows, k, group width) array per ``parts`` entry, in order)
    into ``x`` (rows, cols), rounded once to ``x``'s dtype. Nothing for no pieces."""
    if not pieces:
        return
    rows = x.shape[0]
    # explicit width: -1 is ambiguous when rows == 0
    flat = [xp.reshape(p, (rows, p.shape[1] * p.shape[2])) for p in pieces]
    x[...] = xp.astype(flat[0] if len(flat) == 1 else xp.concat(flat, axis=1), x.dtype)


def quant_int(x, size, quantile, qmin, qmax, divisor, sym, full_range, store, xp, out_scale=None):
    """Twin of ``_kernels_int.quant_int``: quantize ``x`` in place per ``store``
    (``_codecs.STORE``: ``"nothing"``, ``"unscaled"`` (the codes), ``"scaled"`` or
    ``"out_scaled"`` with ``out_scale``);
    returns ``(scale, zp)`` of shape (rows, n_groups) in the compute dtype.

    ``quantile`` is a Python float or an array of shape (rows, n_groups).
    """
    rows = x.shape[0]
    cdt = compute_dtype(x.dtype, xp)
    device = array_api_compat.device(x)
    w, quantile, out_scale = in_compute_dtype((x, quantile, out_scale), cdt, xp)
    out, scales, zps = [], [], []
    for part, cut in parts(w, size, xp):
        q = quantile if isinstance(quantile, float) else quantile[:, cut]
        scale, zp = int_group_params(xp.min(part, axis=-1), xp.max(part, axis=-1), q, divisor, sym, full_range, xp)
        scales.append(scale)
        zps.append(zp)
        if store == "nothing":
            continue
        code = int_code(part, scale[..., None], zp[..., None], qmin, qmax, xp)
        if store == "unscaled":
            values = code
        else:
            m = out_scale[:, cut] if store == "out_scaled" else scale
            values = (code - zp[..., None]) * m[..., None]
        out.append(values)
    store_groups(x, out, xp)
    return concat_columns(scales, rows, cdt, xp, device), concat_columns(zps, rows, cdt, xp, device)


def finite_by_row(x, xp):
    """Per-row ``all(isfinite)`` as a NumPy-convertible bool array."""
    return xp.all(xp.isfinite(x), axis=1)
