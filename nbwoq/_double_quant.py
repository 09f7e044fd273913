"""Double quantization: ``quant_tensor(..., double_quant=True)`` also quantizes the scales.

The reference's order, kept: the weight's groups are quantized as usual; the scales,
flattened row-major to one row, have their mean subtracted (``double_quant_scheme``
"asym", the default) and are quantized with ``quant_tensor`` (``double_quant_dtype``,
``double_quant_bits``, ``double_quant_group_size``, always "sym"); the weight is then
dequantized with the double-quantized scales.

SPEC deviation 3: the mean is added back whenever it was subtracted (the reference
forgets it unless the scheme was passed explicitly), groups that do not divide the row
are double quantized too (the reference skips them and returns a tuple), and
``double_quant_return_int=True`` returns the scales' codes, their scales and the mean.

Passes over the weight: with ``return_int`` one (codes and scales, as without double
quantization); without it one read for the scales and one read-and-write that quantizes
each group as usual (its parameters recomputed while it is in cache) and stores the value
dequantized with the double-quantized scale (``_integer.quantize_int`` ``store="out_scaled"``,
``_kernels_codebook`` with an output scale). The only (rows, n_groups) array is the
scales', double-quantized in place.

The scale mean is summed in float32 in the order of torch's CPU ``sum`` (``mean``),
which the reference uses, so results match it bit for bit (``torch_order_sum``).
"""

import array_api_compat

from nbwoq import _dispatch_codebook, _integer, _validate
from nbwoq._tables import FLOAT_MAPPING

# torch's CPU float32 sum (aten/src/ATen/native/cpu/SumKernel.cpp, "cascade sum"):
# vectors of 8 lanes (its AVX2 kernel, which AVX-512 machines run too), 4 vectors side
# by side, and partial sums that cascade through 4 levels of 2**p items.
_LANES = 8
_ILP = 4
_LEVELS = 4


def _ceil_log2(n):
    return 1 if n <= 2 else (n - 1).bit_length()


def _running_sum(a, xp):
    """Left-to-right sum over axis 0 of ``a`` (zeros when empty), as one accumulator."""
    if a.shape[0] == 0:
        return xp.zeros(tuple(a.shape[1:]), dtype=a.dtype, device=array_api_compat.device(a))
    acc = a[0, ...]
    for j in range(1, a.shape[0]):
        acc = acc + a[j, ...]
    return acc


def _cascade_sum(x, xp):
    """torch's ``multi_row_sum``: ``x`` is (size, ILP, lanes); returns (ILP, lanes).

    Items are added into a level-0 accumulator; after every ``2**p`` items it is pushed
    into level 1 and cleared, level 1 into level 2 after every ``2**p`` pushes, and so
    on; the last level never clears. At the end the levels are added, 0 to 3.
    """
    step = 1 << max(4, _ceil_log2(x.shape[0]) // _LEVELS)
    left = []  # what each level holds at the end
    items = x
    for _ in range(_LEVELS - 1):
        full = items.shape[0] // step
        left.append(_running_sum(items[full * step:, ...], xp))
        blocks = xp.reshape(items[: full * step, ...], (full, step) + tuple(items.shape[1:]))
        # each push: one block of items added left to right from zero
        items = blocks[:, 0, ...]
        for j in range(1, step):
            items = items + blocks[:, j, ...]
    left.append(_running_sum(items, xp))
    total = left[0]
    for level in left[1:]:
        total = total + level
    return total


def _row_sum(x, xp):
    """torch's ``row_sum``: ``x`` is (size, lanes); returns (lanes,)."""
    size = x.shape[0]
    n = size // _ILP
    sums = _cascade_sum(xp.reshape(x[: n * _ILP, ...], (n, _ILP) + tuple(x.shape[1:])), xp)
    first = sums[0, ...]
    for i in range(n * _ILP, size):
        first = first + x[i, ...]
    for k in range(1, _ILP):
        first = first + sums[k, ...]
    return first


def torch_order_sum(x, xp):
    """Sum of the 1-D float array ``x`` in the order of torch's single-threaded CPU sum."""
    n = x.shape[0]
    if n < _LANES:
        return _row_sum(xp.reshape(x, (n, 1)), xp)[0]
    vectors = n // _LANES
    lanes = _row_sum(xp.reshape(x[: vectors * _LANES], (vectors, _LANES)), xp)
    acc = xp.zeros((), dtype=x.dtype, device=array_api_compat.device(x))
    for k in range(vectors * _LANES, n):
        acc = acc + x[k]
    for k in range(_LANES):
        acc = acc + lanes[k]
    return acc


def scale_mean(flat, xp):
    """The mean of the 1-D array ``flat`` as torch computes ``flat.mean()``: its sum over
    the element count, in ``flat``'s dtype (a 0-d array)."""
    device = array_api_compat.device(flat)
    if flat.shape[0] == 0:  # torch gives NaN; 0 / 0 would also warn on NumPy
        return xp.asarray(float("nan"), dtype=flat.dtype, device=device)
    count = xp.asarray(flat.shape[0], dtype=flat.dtype, device=device)
    return torch_order_sum(flat, xp) / count


def quantize_scales(scale, xp, options, quant_tensor):
    """Double-quantize ``scale`` (rows, n_groups, nbwoq's own array: changed in place).

    Returns ``(dequantized, packed)``: the double-quantized scales (rows, n_groups), and
    with ``double_quant_return_int`` instead ``packed = (codes, hyper_scale, mean)``
    (codes (rows, n_groups), ``hyper_scale`` (1, n_hyper_groups), ``mean`` a 0-d array
    or None when nothing was subtracted) and ``dequantized`` None.
    """
    shape = tuple(scale.shape)
    flat = xp.reshape(scale, (1, -1))
    mean = None
    if options["double_quant_scheme"] == "asym":
        mean = scale_mean(flat[0, ...], xp)
        flat -= mean
    result = quant_tensor(
        flat, bits=options["double_quant_bits"], group_size=options["double_quant_group_size"], scheme="sym",
        dtype=options["double_quant_dtype"], return_int=options["double_quant_return_int"], check_finite=False,
    )
    if options["double_quant_return_int"]:
        codes, hyper_scale, _ = result
        return None, (xp.reshape(codes, shape), hyper_scale, mean)
    if mean is not None:
        flat += mean
    return xp.reshape(flat, shape), None


def quant_tensor_double(weight, xp, bits, group_size, scheme, quantile, dtype, return_int, full_range,
                        cast_int, options, quant_tensor):
    """``quant_tensor`` with ``double_quant=True`` on a validated weight; see the module
    notes. ``quant_tensor`` is the public function (it quantizes the scales)."""
    if options["check_finite"]:
        _validate.check_finite(weight, xp)
    sym = scheme == "sym"
    codebook = dtype in FLOAT_MAPPING
    values = "codes" if (return_int or cast_int) else "levels"
    zp = None
    if codebook:
        scale = _dispatch_codebook.quantize_codebook(
            weight, xp, dtype, group_size, quantile, values, "unscaled" if return_int else "nothing",
            keep_scale=True, check=False,
        )
    elif return_int:
        scale, zp = _integer.quantize_int(
            weight, xp, bits, group_size, sym, full_range, quantile, store="unscaled", keep_params=True, check=False,
            known_finite=options["check_finite"],
        )
    else:
        scale, _ = _integer.quantize_int(
            weight, xp, bits, group_size, sym, full_range, quantile, store="nothing", keep_params=True, check=False,
            known_finite=options["check_finite"],
        )
    # the scales are small arrays: NumPy ones (Numba path) go through NumPy's namespace
    dequantized, packed = quantize_scales(scale, xp or array_api_compat.array_namespace(scale), options,
                                          quant_tensor)
    if return_int:
        return weight, (packed if packed is not None else dequantized), (None if sym else zp)
    if codebook:
        _dispatch_codebook.quantize_codebook(weight, xp, dtype, group_size, quantile, values, "out_scaled",
                                    out_scale=dequantized, check=False)
    else:
        _integer.quantize_int(weight, xp, bits, group_size, sym, full_range, quantile, store="out_scaled",
                              keep_params=False, check=False, out_scale=dequantized,
                              known_finite=options["check_finite"])
    return weight
