"""Slow, obviously-correct loops: the integer formula one group at a time in float32.

Independent of both the kernels and the array-API reference (plain Python control flow,
NumPy float32 scalars), so a shared mistake in those two would show here.
"""

import numpy as np


def quant_tensor_int(w, bits, group_size, scheme, quantile=1.0, full_range=False):
    """Codes, scales and zero points of ``w`` (float32, 2-D); ``w`` is not modified.

    A group whose scale underflows to 0 gets NaN codes and zero point, as in the
    reference (no warning: it is the documented result)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _quant_tensor_int(w, bits, group_size, scheme, quantile, full_range)


def _quant_tensor_int(w, bits, group_size, scheme, quantile, full_range):
    f = np.float32
    rows, cols = w.shape
    g = cols if group_size == -1 or group_size > cols else group_size
    starts = list(range(0, cols, g))
    codes = np.empty_like(w)
    scales = np.empty((rows, len(starts)), np.float32)
    zps = np.zeros((rows, len(starts)), np.float32)
    for r in range(rows):
        for k, s in enumerate(starts):
            x = w[r, s : s + g]
            lo, hi = x.min(), x.max()
            if scheme == "asym":
                maxq = 2**bits - 1
                wmin = min(lo, f(0)) * f(quantile)
                wmax = max(hi, f(0)) * f(quantile)
                if wmin == 0 and wmax == 0:
                    wmin, wmax = f(-1), f(1)
                scale = f(wmax - wmin) / f(maxq)
                zp = np.rint(-wmin / scale)
                q = np.clip(np.rint(x / scale) + zp, f(0), f(maxq))
            else:
                if bits == 1:
                    qmin, qmax = 0, 1
                else:
                    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
                wmax = max(abs(hi), abs(lo)) * f(quantile)
                if wmax == 0:
                    wmax = f(1)
                if full_range:
                    scale = f(wmax) / f(2 ** (bits - 1))
                    if abs(hi) > abs(lo):
                        scale = -scale
                else:
                    scale = f(wmax) / f(qmax)
                zp = f(0)
                q = np.clip(np.rint(x / scale), f(qmin), f(qmax))
            codes[r, s : s + g] = q
            scales[r, k] = scale
            zps[r, k] = zp
    return codes, scales, zps
