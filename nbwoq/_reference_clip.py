"""Array-API reference for the clip-ratio search: the twin of ``_kernels_clip``.

It scores a chunk of candidate ratios at once by broadcasting a candidate axis in front
of the grouped weight (``(k, rows, groups, size)``), so its temporaries are ``k`` times
the weight; ``k`` is chosen to keep them near a fixed element budget. The code formulas
are ``_reference_int``'s and ``_reference_codebook``'s, the twins of the helpers the
kernel uses.

A format is ``("int", qmin, qmax, divisor, sym, full_range)`` or
``("codebook", mids, levels, max_level)`` with the padded tables of
``_tables.reference_tables``.
"""

from nbwoq import _arrays
from nbwoq._arrays import compute_dtype
from nbwoq._reference_codebook import codebook_scale, nearest_level
from nbwoq._reference_int import int_code, int_group_params, parts

#: Element budget for one chunk of candidates (the candidate axis times the weight).
CHUNK_ELEMENTS = 1 << 24


def _dequant(part, ratios, fmt, xp):
    """``part`` (rows, groups, size) fake-quantized with each ratio of ``ratios`` (k,):
    shape (k, rows, groups, size), in the compute dtype."""
    if fmt[0] == "codebook":
        _, mids, levels, max_level = fmt
        absmax = xp.max(xp.abs(part), axis=-1)[None, ...]
        scale = codebook_scale(absmax, ratios[:, None, None], max_level)[..., None]
        index = nearest_level(part[None, ...] / scale, mids, xp)
        flat = xp.take(levels, xp.reshape(index, (-1,)), axis=0)
        return xp.reshape(flat, index.shape) * scale
    _, qmin, qmax, divisor, sym, full_range = fmt
    lo = xp.min(part, axis=-1)[None, ...]
    hi = xp.max(part, axis=-1)[None, ...]
    scale, zp = int_group_params(lo, hi, ratios[:, None, None], divisor, sym, full_range, xp)
    scale = scale[..., None]
    zp = zp[..., None]
    return (int_code(part[None, ...], scale, zp, qmin, qmax, xp) - zp) * scale


def magnitude_weights(part, cdt, xp):
    """``rms + |x|`` per element of ``part`` (rows, groups, size): ``rms`` the group's root
    mean square, from float64 squares and sums, rounded to the compute dtype ``cdt``."""
    wide = xp.astype(part, xp.float64)
    rms = xp.astype(_arrays.sqrt(xp.sum(wide * wide, axis=-1) / part.shape[-1], xp), cdt)
    return rms[..., None] + xp.abs(part)


def group_errors(x, size, ratios, fmt, xp, weighted=False):
    """Squared-error sums of every group for every candidate: float64 (k, rows, n_groups).

    ``x`` is the weight (rows, cols) in its own dtype, ``ratios`` a 1-D array in the
    compute dtype, ``fmt`` the format (see the module notes).
    The dequantized values are rounded to ``x``'s dtype, as quant_tensor stores them,
    before the error is taken; squares are in the compute dtype, sums in float64.
    ``weighted``: each squared error is multiplied by ``magnitude_weights``.
    """
    rows, cols = x.shape
    cdt = compute_dtype(x.dtype, xp)
    w = xp.astype(x, cdt)
    pieces = [part for part, _ in parts(w, size, xp)]
    n_cand = ratios.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(1, rows * cols))
    weights = [magnitude_weights(part, cdt, xp)[None, ...] if weighted else None for part in pieces]
    chunks = []
    for k0 in range(0, n_cand, step):
        chunk = ratios[k0:min(k0 + step, n_cand)]
        sums = []
        for part, weight in zip(pieces, weights):
            stored = xp.astype(xp.astype(_dequant(part, chunk, fmt, xp), x.dtype), cdt)
            d = part[None, ...] - stored
            e = d * d if weight is None else d * d * weight
            sums.append(xp.sum(xp.astype(e, xp.float64), axis=-1))
        if not sums:
            sums = [xp.zeros((chunk.shape[0], rows, 0), dtype=xp.float64)]
        chunks.append(sums[0] if len(sums) == 1 else xp.concat(sums, axis=-1))
    return chunks[0] if len(chunks) == 1 else xp.concat(chunks, axis=0)


def first_bad_group(x, size, xp):
    """Index ``r * n_groups + g`` of the first group holding NaN or Inf, or -1."""
    flags = [xp.all(xp.isfinite(part), axis=-1) for part, _ in parts(x, size, xp)]
    if not flags:
        return -1
    finite = flags[0] if len(flags) == 1 else xp.concat(flags, axis=-1)
    finite = xp.reshape(finite, (-1,))
    if bool(xp.all(finite)):
        return -1
    return int(xp.argmax(xp.astype(~finite, xp.int8)))


def pick_per_group(errors, ratios, xp):
    """Per group, the ratio with the smallest error, the first on a tie; ``ratios[0]``
    where no error is finite. ``errors`` (k, rows, n_groups) -> (rows, n_groups)."""
    shape = errors.shape[1:]
    low = xp.full(shape, float("inf"), dtype=xp.float64)
    pick = xp.zeros(shape, dtype=xp.int64)
    for k in range(errors.shape[0]):
        better = errors[k, ...] < low
        low = xp.where(better, errors[k, ...], low)
        pick = xp.where(better, xp.asarray(k, dtype=xp.int64), pick)
    return xp.reshape(xp.take(ratios, xp.reshape(pick, (-1,)), axis=0), shape)


def search(x, size, ratios, fmt, per_group, xp, weighted=False):
    """Twin of ``_kernels_clip.search``, already reduced.

    Returns ``(result, bad)``: ``result`` is the float64 total squared error per ratio
    (n_cand,) or, with ``per_group``, the best ratio per group (rows, n_groups) in the
    compute dtype; ``bad`` is the first group holding NaN or Inf (``r * n_groups + g``)
    or -1, in which case nothing was scored.
    """
    bad = first_bad_group(x, size, xp)
    if bad >= 0:
        return None, bad
    errors = group_errors(x, size, ratios, fmt, xp, weighted)
    if per_group:
        return pick_per_group(errors, ratios, xp), -1
    return xp.sum(xp.reshape(errors, (errors.shape[0], -1)), axis=1), -1
