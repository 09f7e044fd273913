"""Numba kernels for the 4-bit codebooks (NF4, FP4): nearest level by midpoints.

Each group's scale is ``absmax * quantile / max(levels)``; each value ``v = x / scale``
takes the level whose midpoint interval holds it: level 0 when ``v <= mid[0]``, level
``i`` when ``mid[i-1] < v <= mid[i]``, the last level when ``v > mid[-1]`` (ties go to
the lower level). The reference builds one full-size temporary per level; here each
element is decided in registers by a fixed chain of 15 compare/selects, which LLVM
vectorizes (a table-lookup binary search does not).

NaN (the reference's ``0 / 0`` in an all-zero group, whose scale is 0) satisfies no
interval in the reference and keeps the zero its accumulator started from: the level
0.0. Every codebook has level 0.0 at index ``ZERO_INDEX`` (checked in ``_tables``), so
the first ``ZERO_INDEX`` midpoints are tested as ``not (v <= mid)``, true for NaN, and
the others as ``v > mid``, false for NaN: NaN lands on level 0.0 with no branch.

Tables reach the kernels padded to fixed lengths (``_tables.kernel_tables``): 15
midpoints (a 15-level table gets ``+inf`` last, which no value exceeds) and 16 values.

The array-API twin of these kernels is ``_reference_codebook``; tests hold them equal.
"""

import numpy as np
from numba import prange, types
from numba.extending import overload, register_jitable

from nbwoq._codecs import STORE_OUT_SCALED, STORE_SCALED, STORE_UNSCALED, decode, encode
from nbwoq._config import njit_kernel
from nbwoq._layout import group_segment
from nbwoq._tables import N_MIDS, ZERO_INDEX

# What the kernel computes for each group's scale (``scale_mode``).
SCALE_COMPUTE = 0  # from the group's absmax, not kept
SCALE_KEEP = 1  # from the group's absmax, written to scale[r, g]
SCALE_GIVEN = 2  # read from scale[r, g]

if ZERO_INDEX != 7 or N_MIDS != 15:  # pragma: no cover - the chains below spell the split out
    raise ImportError(f"the compare chains assume level 0.0 at index 7 of 15 midpoints, got {ZERO_INDEX} of {N_MIDS}")


@register_jitable(inline="always")
def codebook_scale(absmax, quantile, max_level):
    """The group scale ``absmax * quantile / max_level``, in the reference's op order."""
    return absmax * quantile / max_level


@register_jitable(inline="always")
def nearest_level(v, mids):
    """Index of the level the midpoint rule picks for the scaled value ``v``.

    ``mids`` holds ``N_MIDS`` ascending midpoints in the compute type, padded with
    ``+inf`` (an array, or better a tuple built once outside the element loop so the
    loads leave the loop). Level 0 when ``v <= mids[0]``, ``i`` when
    ``mids[i-1] < v <= mids[i]``; NaN gives ``ZERO_INDEX``, the level 0.0. A
    branch-free count of 15 compares.
    """
    n = 0
    # Below the zero level: "not <=" so that NaN counts as above (see module notes).
    n += not (v <= mids[0])
    n += not (v <= mids[1])
    n += not (v <= mids[2])
    n += not (v <= mids[3])
    n += not (v <= mids[4])
    n += not (v <= mids[5])
    n += not (v <= mids[6])
    n += v > mids[7]
    n += v > mids[8]
    n += v > mids[9]
    n += v > mids[10]
    n += v > mids[11]
    n += v > mids[12]
    n += v > mids[13]
    n += v > mids[14]
    return n


# Inlined by LLVM rather than at Numba IR level: Numba's IR inliner trips over the
# chain of conditional expressions (spurious NumbaIRAssumptionWarning), LLVM does not.
@register_jitable
def level_value(v, mids, values):
    """``values[nearest_level(v, mids)]`` as a chain of selects (no gather).

    The conditions are monotone in ``v`` (the midpoints ascend), so the last one that
    holds names the level; each select is a vector blend. ``values`` holds
    ``N_VALUES`` entries (a tuple, like ``mids``).
    """
    out = values[0]
    out = values[1] if not (v <= mids[0]) else out
    out = values[2] if not (v <= mids[1]) else out
    out = values[3] if not (v <= mids[2]) else out
    out = values[4] if not (v <= mids[3]) else out
    out = values[5] if not (v <= mids[4]) else out
    out = values[6] if not (v <= mids[5]) else out
    out = values[7] if not (v <= mids[6]) else out
    out = values[8] if v > mids[7] else out
    out = values[9] if v > mids[8] else out
    out = values[10] if v > mids[9] else out
    out = values[11] if v > mids[10] else out
    out = values[12] if v > mids[11] else out
    out = values[13] if v > mids[12] else out
    out = values[14] if v > mids[13] else out
    out = values[15] if v > mids[14] else out
    return out


@register_jitable(inline="always")
def mids_tuple(mids):
    """The ``N_MIDS`` midpoints of array ``mids`` as a tuple (loop-invariant registers)."""
    return (mids[0], mids[1], mids[2], mids[3], mids[4], mids[5], mids[6], mids[7],
            mids[8], mids[9], mids[10], mids[11], mids[12], mids[13], mids[14])


@register_jitable(inline="always")
def values_tuple(values):
    """The ``N_VALUES`` entries of array ``values`` as a tuple."""
    return (values[0], values[1], values[2], values[3], values[4], values[5], values[6], values[7],
            values[8], values[9], values[10], values[11], values[12], values[13], values[14], values[15])


def abs_bits(element):
    """Storage element -> the bit pattern of its absolute value, unsigned (jitted only)."""
    raise NotImplementedError("abs_bits is only callable from Numba kernels")


def from_abs_bits(bits, element):
    """``abs_bits`` result -> the compute value, for ``element``'s type (jitted only)."""
    raise NotImplementedError("from_abs_bits is only callable from Numba kernels")


# |x| as an integer: the sign bit cleared. For IEEE floats (and the half bit patterns)
# that integer orders like |x|, NaN above Inf, so an integer max finds the absmax and
# keeps a NaN, and integer max reductions vectorize (about 2.4x faster than a chain of
# llvm.maximum, which x86 has to emulate).
@overload(abs_bits, inline="always")
def _abs_bits(element):
    if element == types.float32:
        return lambda element: np.float32(element).view(np.uint32) & np.uint32(0x7FFFFFFF)
    if element == types.float64:
        return lambda element: np.float64(element).view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF)
    if element == types.uint16:  # float16 bits
        return lambda element: element & np.uint16(0x7FFF)
    if element == types.int16:  # bfloat16 bits
        return lambda element: np.uint16(element) & np.uint16(0x7FFF)
    return None


@overload(from_abs_bits, inline="always")
def _from_abs_bits(bits, element):
    if element == types.float32:
        return lambda bits, element: np.uint32(bits).view(np.float32)
    if element == types.float64:
        return lambda bits, element: np.uint64(bits).view(np.float64)
    if element == types.uint16:
        return lambda bits, element: decode(np.uint16(bits))
    if element == types.int16:
        return lambda bits, element: decode(np.int16(np.uint16(bits)))
    return None


@register_jitable(inline="always")
def group_absmax(seg):
    """NaN-propagating ``max(|x|)`` of the group ``seg`` (1-D, non-empty), compute type."""
    m = abs_bits(seg[0])
    # Index from 0 over a slice so LLVM drops the wraparound check and vectorizes.
    for i in range(seg.shape[0]):
        m = max(m, abs_bits(seg[i]))
    return from_abs_bits(m, seg[0])


@njit_kernel
def quant_codebook(w, size, n_groups, quantile, mids, values, max_level, scale, out_scale,
                   scale_mode, store_mode):
    """Quantize ``w`` to a codebook in place, one group at a time while it is in cache.

    ``quantile`` is (1, 1) for one clip ratio or (rows, n_groups) for one per group.
    ``mids`` (``N_MIDS``) and ``values`` (``N_VALUES``) are the padded tables in the
    compute type; ``values`` holds what to store per level (the levels or their codes).
    ``scale`` (rows, n_groups) is written or read per ``scale_mode``; ``out_scale``
    (rows, n_groups) is read only by ``STORE_OUT_SCALED``. See the ``SCALE_*`` constants
    and ``_codecs``' ``STORE_*`` (``values[level]`` is the unscaled value).
    """
    rows = w.shape[0]
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    mt = mids_tuple(mids)
    vt = values_tuple(values)
    for t in prange(rows * n_groups):
        r, g, seg = group_segment(w, t, n_groups, size)
        if scale_mode == SCALE_GIVEN:
            s = scale[r, g]
        else:
            q = quantile[r, g] if per_group else quantile[0, 0]
            s = codebook_scale(group_absmax(seg), q, max_level)
            if scale_mode == SCALE_KEEP:
                scale[r, g] = s
        if store_mode == STORE_UNSCALED:
            for i in range(seg.shape[0]):
                seg[i] = encode(level_value(decode(seg[i]) / s, mt, vt), w)
        elif store_mode == STORE_SCALED or store_mode == STORE_OUT_SCALED:
            m = s if store_mode == STORE_SCALED else out_scale[r, g]
            for i in range(seg.shape[0]):
                seg[i] = encode(level_value(decode(seg[i]) / s, mt, vt) * m, w)
