"""The importance-weighted error that the data-free methods minimize, for reports.

``refit_int`` and ``search_clip(weighting="magnitude")`` weight each element's squared
error by ``rms + |x|`` (``rms`` the root mean square of the element's group of the
original weight): llama.cpp's importance without an importance matrix. Reports state
each method's error in that measure, so RTN and the method are compared on what the
method optimizes. Written against the array API: NumPy arrays and torch tensors on any
device alike.
"""

import array_api_compat

from nbwoq._layout import group_layout


def weighted_error(original, approx, group_size):
    """``(sum(w * (x - y)**2), sum(w * x**2))`` as Python floats (float64 sums), with
    ``w = rms + |x|`` per group of ``group_size`` columns of ``x = original`` (the tail
    group too); ``y = approx`` has the same shape. Their ratio is the relative weighted
    error."""
    xp = array_api_compat.array_namespace(original, approx)
    x = xp.astype(original, xp.float64)
    y = xp.astype(approx, xp.float64)
    rows, cols = x.shape
    if rows == 0 or cols == 0:
        return 0.0, 0.0
    size, _ = group_layout(cols, group_size)
    err = norm = 0.0
    full = cols // size * size
    for start, stop, n in ((0, full, full // size), (full, cols, 1)):
        if stop <= start:
            continue
        width = (stop - start) // n
        seg = xp.reshape(x[:, start:stop], (rows, n, width))
        diff = xp.reshape(y[:, start:stop], (rows, n, width)) - seg
        rms = xp.sqrt(xp.mean(seg * seg, axis=2, keepdims=True))
        w = rms + xp.abs(seg)
        err += float(xp.sum(w * diff * diff))
        norm += float(xp.sum(w * seg * seg))
    return err, norm


def relative(err, norm):
    """``err / norm``, 0.0 for an all-zero weight."""
    return err / norm if norm > 0 else 0.0
