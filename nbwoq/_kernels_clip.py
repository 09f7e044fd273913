"""Numba kernel for the clip-ratio search: every candidate scored in one pass.

The reference fake-quantizes the whole weight once per candidate ratio (40 passes over
memory). Here each group is read once: its min and max (or absmax) are taken, then it
is walked in cache-sized chunks, and every candidate's squared error is computed on a
chunk while it sits in L1. Nothing is written to the weight.

Determinism: the (rows x groups) tasks are cut into ``n_blocks`` contiguous blocks, a
number that depends on the shape only (``block_count``). Each block is processed
serially and writes its own per-candidate partial sums; the caller adds the blocks in
a fixed order. The answer is therefore the same for any thread count.

Codes are decided by the helpers of ``_kernels_int`` and ``_kernels_codebook`` (the
very ones quant_tensor uses) with fastmath off. Only the error sums run with
reassociation (``_SUM_OPTIONS``), in a helper of their own so that they vectorize;
LLVM keeps the flags per instruction when it inlines the helper.

The array-API twin is ``_reference_clip``; tests hold them equal.
"""

import numpy as np
from numba import prange

from nbwoq._codecs import decode, encode
from nbwoq._config import REDUCTION, njit, njit_kernel
from nbwoq._layout import group_segment
from nbwoq._kernels_codebook import codebook_scale, group_absmax, level_value, mids_tuple, values_tuple
from nbwoq._kernels_int import group_minmax, int_code, int_group_params

#: Elements scored per candidate before moving to the next candidate: small enough that
#: a chunk and its squared errors stay in L1, large enough to amortize the loop set-up.
CHUNK = 256

#: At most this many blocks of tasks, so the partial sums stay tiny (a few hundred KiB at
#: most) next to the weight, while leaving enough blocks to balance any thread count.
MAX_BLOCKS = 256

# Reassociation only: the sums must still become NaN when an error is NaN (an overflowing
# range), so no ``nnan``; no ``arcp``/``contract`` either (not needed to vectorize a sum).
_SUM_OPTIONS = dict(REDUCTION, fastmath={"reassoc"})


def block_count(n_tasks):
    """Blocks for ``n_tasks`` (rows x groups) tasks: a function of the shape only."""
    return min(n_tasks, MAX_BLOCKS)


@njit(**_SUM_OPTIONS)
def sum_squares(buf, n):
    """Sum of ``buf[:n]`` in float64 (the values are squared errors in the compute type)."""
    acc = np.float64(0)
    for i in range(n):
        acc += np.float64(buf[i])
    return acc


@njit(**_SUM_OPTIONS)
def group_rms(seg):
    """``sqrt(mean(x**2))`` of the group in float64 (squares and sum in float64)."""
    acc = np.float64(0)
    for i in range(seg.shape[0]):
        x = np.float64(decode(seg[i]))
        acc += x * x
    return np.sqrt(acc / seg.shape[0])


@njit_kernel
def search(w, size, n_groups, ratios, codebook, qmin, qmax, divisor, sym, full_range, mids, levels, max_level,
           n_blocks, per_group, weighted, partial, best, first_bad):
    """Score every clip ratio of ``ratios`` for the group quantization of ``w``.

    The format: ``codebook`` False is the integer one (``qmin``, ``qmax``, ``divisor``,
    ``sym``, ``full_range`` as for ``_kernels_int.quant_int``); True is the 4-bit
    codebook whose padded midpoints and levels are ``mids`` and ``levels``
    (``_tables.kernel_tables``), largest level ``max_level``. The other format's
    arguments are ignored.

    Per tensor (``per_group`` False): ``partial[b, k]`` receives block ``b``'s sum of
    squared errors for ratio ``k`` (float64). Per group: ``best[r, g]`` receives the ratio
    with the smallest squared error of group ``(r, g)``, the first one on a tie; a group
    where no ratio gives a finite error gets ``ratios[0]``. ``first_bad[b]`` is the first
    task (``r * n_groups + g``) of block ``b`` whose group holds NaN or Inf, else -1;
    such groups are skipped.

    ``weighted``: each squared error is multiplied by ``rms + |x|`` (``rms`` the group's
    root mean square, rounded to the compute type), the magnitude weighting of
    ``search_clip(weighting="magnitude")``.
    """
    rows = w.shape[0]
    n_cand = ratios.shape[0]
    zero = divisor - divisor
    one = divisor / divisor
    n_tasks = rows * n_groups
    inf = np.float64(np.inf)
    mt = mids_tuple(mids)
    lt = values_tuple(levels)
    for b in prange(n_blocks):
        t0 = b * n_tasks // n_blocks
        t1 = (b + 1) * n_tasks // n_blocks
        scales = np.empty(n_cand, dtype=ratios.dtype)
        zps = np.zeros(n_cand, dtype=ratios.dtype)
        sse = np.empty(n_cand, dtype=np.float64)
        buf = np.empty(CHUNK, dtype=ratios.dtype)
        cell = np.empty(1, dtype=ratios.dtype)
        acc = partial[b]
        if not per_group:
            for k in range(n_cand):
                acc[k] = 0
        first_bad[b] = -1
        for t in range(t0, t1):
            r, g, seg = group_segment(w, t, n_groups, size)
            lo = zero
            hi = zero
            if codebook:
                hi = group_absmax(seg)
            else:
                lo, hi = group_minmax(seg, False)  # NaN-propagating: the check below
            # x - x is NaN exactly when x is NaN or +-Inf (min, max and absmax propagate NaN).
            if not (lo - lo == zero and hi - hi == zero):
                if first_bad[b] < 0:
                    first_bad[b] = t
                continue
            rms = zero
            if weighted:
                cell[0] = group_rms(seg)  # stored: rounded to the compute type
                rms = cell[0]
            for k in range(n_cand):
                if codebook:
                    scales[k] = codebook_scale(hi, ratios[k], max_level)
                else:
                    scales[k], zps[k] = int_group_params(lo, hi, ratios[k], divisor, sym, full_range, zero, one)
                sse[k] = 0
            for c0 in range(0, seg.shape[0], CHUNK):
                part = seg[c0:c0 + CHUNK]
                n = part.shape[0]
                for k in range(n_cand):
                    scale = scales[k]
                    zp = zps[k]
                    # The error of the value quant_tensor would store (rounded once to
                    # the weight's dtype), squared in the compute type.
                    if codebook:
                        for i in range(n):
                            x = decode(part[i])
                            d = x - decode(encode(level_value(x / scale, mt, lt) * scale, w))
                            buf[i] = d * d
                    else:
                        for i in range(n):
                            x = decode(part[i])
                            d = x - decode(encode((int_code(x, scale, zp, qmin, qmax) - zp) * scale, w))
                            buf[i] = d * d
                    if weighted:
                        for i in range(n):
                            buf[i] *= rms + abs(decode(part[i]))
                    sse[k] += sum_squares(buf, n)
            if per_group:
                pick = 0
                low = inf
                for k in range(n_cand):
                    if sse[k] < low:
                        low = sse[k]
                        pick = k
                best[r, g] = ratios[pick]
            else:
                for k in range(n_cand):
                    acc[k] += sse[k]
