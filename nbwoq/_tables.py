"""Format facts: the 4-bit codebooks, their integer codes and their midpoints.

The values are the reference's, to the last digit (they are public API). Everything a
kernel needs about a codebook is derived here once and checked at import.
"""

import functools

import array_api_compat
import numpy as np

from nbwoq._arrays import compute_dtype

#: The 16 levels of NF4 (4-bit NormalFloat), ascending, in [-1, 1].
NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]
#: The levels of bitsandbytes' FP4 (``dtype="fp4"`` or ``"fp4_e2m1_bnb"``), ascending: 15 of
#: them, the reference has no second zero.
FP4_BNB = [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -0.0625, 0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
#: The 15 levels of ``dtype="fp4_e2m1"``, ascending, in [-1, 1].
FP4_E2M1 = [
    -1.0,
    -0.6666666666666666,
    -0.5,
    -0.3333333333333333,
    -0.25,
    -0.16666666666666666,
    -0.010416666666666666,
    0.0,
    0.010416666666666666,
    0.16666666666666666,
    0.25,
    0.3333333333333333,
    0.5,
    0.6666666666666666,
    1.0,
]

#: The signed 4-bit code of each level of NF4, in the same order (what ``return_int`` stores).
NF4_BIT = [7, 1, 2, 3, 4, 5, 6, 0, -8, -7, -6, -5, -4, -3, -2, -1]
#: The signed 4-bit code of each level of FP4_BNB, in the same order.
FP4_BNB_BIT = [-5, -6, -3, -4, -1, -2, -7, 0, 1, 6, 7, 4, 5, 2, 3]
#: The signed 4-bit code of each level of FP4_E2M1, in the same order.
FP4_E2M1_BIT = [-1, -2, -3, -4, -5, -6, -7, 0, 1, 2, 3, 4, 5, 6, 7]

#: Codebook ``dtype`` name -> its levels.
FLOAT_MAPPING = {"nf4": NF4, "fp4": FP4_BNB, "fp4_e2m1_bnb": FP4_BNB, "fp4_e2m1": FP4_E2M1}
#: Codebook ``dtype`` name -> the codes of its levels, in the same order.
INT_MAPPING = {"nf4": NF4_BIT, "fp4": FP4_BNB_BIT, "fp4_e2m1_bnb": FP4_BNB_BIT, "fp4_e2m1": FP4_E2M1_BIT}

#: dtype names accepted by the quantizers: the integer path and every codebook.
DTYPES = ("int",) + tuple(FLOAT_MAPPING)
SCHEMES = ("sym", "asym")

#: Index of the level 0.0 in every codebook (code 0). An all-zero group's ``0 / 0``
#: lands there, as in the reference; the codebook kernels' compare chains rely on it.
ZERO_INDEX = 7


def midpoints(levels):
    """Decision boundaries between consecutive levels, in float64.

    The reference computes ``(a + b) / 2`` in Python floats and rounds the result to the
    tensor's compute type when it compares; callers cast this float64 table once.
    """
    levels = np.asarray(levels, dtype=np.float64)
    return (levels[:-1] + levels[1:]) / 2.0


#: Midpoint slots the codebook kernels' compare chain tests (the largest codebook has 16
#: levels), and value slots.
N_MIDS = 15
N_VALUES = N_MIDS + 1


@functools.lru_cache(maxsize=None)
def kernel_tables(name, dtype_name):
    """``(mids, levels, codes, max_level)`` of codebook ``name`` for the kernels.

    Everything is rounded once to the dtype named ``dtype_name`` (the compute dtype) (as the reference rounds its Python
    floats to the tensor's type): ``mids`` padded to ``N_MIDS`` with ``+inf`` (no value
    exceeds it, so the padding never picks a level), ``levels``/``codes`` padded to
    ``N_VALUES`` by repeating the last entry. Read-only arrays.
    """
    dt = np.dtype(dtype_name)
    levels = np.asarray(FLOAT_MAPPING[name], dtype=np.float64)
    mids = np.full(N_MIDS, np.inf, dtype=dt)
    mids[: levels.size - 1] = midpoints(levels).astype(dt)
    padded = []
    for table in (levels, np.asarray(INT_MAPPING[name], dtype=np.float64)):
        out = np.full(N_VALUES, table[-1], dtype=dt)
        out[: table.size] = table.astype(dt)
        padded.append(out)
    max_level = dt.type(max(FLOAT_MAPPING[name]))
    for a in (mids, *padded):
        a.setflags(write=False)
    return mids, padded[0], padded[1], max_level


def reference_tables(name, x, xp):
    """``kernel_tables`` of codebook ``name`` for the reference path on array ``x``.

    ``(mids, levels, codes, max_level)``: arrays of namespace ``xp`` in ``x``'s compute
    dtype on ``x``'s device, and ``max_level`` a Python float.
    """
    cdt = compute_dtype(x.dtype, xp)
    tables = kernel_tables(name, "float64" if cdt == xp.float64 else "float32")
    device = array_api_compat.device(x)
    # Python floats of the already-rounded tables: exact in the compute dtype.
    mids, levels, codes = (xp.asarray(a.tolist(), dtype=cdt, device=device) for a in tables[:3])
    return mids, levels, codes, float(tables[3])


def _check_tables():
    for name in FLOAT_MAPPING:
        levels = np.asarray(FLOAT_MAPPING[name], dtype=np.float64)
        codes = np.asarray(INT_MAPPING[name])
        if levels.shape != codes.shape:
            raise ImportError(f"codebook {name!r}: {levels.size} levels but {codes.size} codes")
        if not np.all(np.diff(levels) > 0):
            raise ImportError(f"codebook {name!r}: levels are not strictly ascending")
        if len(set(codes.tolist())) != codes.size or codes.min() < -8 or codes.max() > 7:
            raise ImportError(f"codebook {name!r}: codes are not distinct signed 4-bit values")
        if levels[ZERO_INDEX] != 0.0 or codes[ZERO_INDEX] != 0:
            raise ImportError(f"codebook {name!r}: level {ZERO_INDEX} must be 0.0 with code 0")


_check_tables()
