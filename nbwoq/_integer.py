"""Integer group quantization: one dispatch over the Numba kernel and its reference twin."""

import numpy as np

from nbwoq import _arrays, _kernels_int, _reference_int, _validate
from nbwoq._codecs import STORE
from nbwoq._layout import group_layout


def int_range(bits, sym, full_range):
    """``(qmin, qmax, divisor)`` of the integer format.

    asym codes are ``[0, 2**bits - 1]``; sym codes ``[-2**(bits-1), 2**(bits-1) - 1]``
    with ``scale = wmax / qmax``, or ``wmax / 2**(bits-1)`` with ``full_range``. One-bit
    sym is the reference's special case: codes ``{0, 1}``, ``scale = wmax``.
    """
    if not sym:
        qmax = 2**bits - 1
        return 0, qmax, qmax
    if bits == 1:
        return 0, 1, 1
    qmax = 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), qmax, 2 ** (bits - 1) if full_range else qmax


def quantize_int(weight, xp, bits, group_size, sym, full_range, quantile, store, keep_params, check, out_scale=None,
                 known_finite=False):
    """Quantize ``weight`` (already validated) group by group.

    ``store`` (``_codecs.STORE``): ``"nothing"`` (read only), ``"unscaled"`` (the codes),
    ``"scaled"`` (fake-quant) or
    ``"out_scaled"`` (``(code - zp) * out_scale``, ``out_scale`` (rows, n_groups): the
    double-quantized scales). ``quantile`` must already be validated by
    ``_validate.quantile`` for this layout. Returns ``(scale, zp)`` arrays of shape
    (rows, n_groups) in the compute type when ``keep_params``, else ``(None, None)``.
    ``check`` scans for NaN/Inf first; ``known_finite`` says a caller already did, so
    the kernel may take its faster min/max.
    """
    rows, cols = weight.shape
    size, n_groups = group_layout(cols, group_size)
    qmin, qmax, divisor = int_range(bits, sym, full_range)
    if check:
        _validate.check_finite(weight, xp)
    if xp is not None:
        scale, zp = _reference_int.quant_int(
            weight, size, quantile, float(qmin), float(qmax), float(divisor), sym, full_range, store, xp,
            out_scale=out_scale,
        )
        return (scale, zp) if keep_params else (None, None)
    cdt = _arrays.compute_dtype(weight.dtype)
    ctype = cdt.type
    q = _arrays.kernel_param(quantile, cdt)
    params_shape = (rows, n_groups) if keep_params else (1, 1)
    scale = np.empty(params_shape, dtype=cdt)
    zp = np.empty(params_shape, dtype=cdt)
    out = _arrays.kernel_param(out_scale, cdt)
    if rows and n_groups:
        _kernels_int.quant_int(
            _arrays.kernel_view(weight), size, n_groups, q, ctype(qmin), ctype(qmax), ctype(divisor),
            sym, full_range, STORE[store], keep_params, scale, zp, out, check or known_finite,
        )
    return (scale, zp) if keep_params else (None, None)
