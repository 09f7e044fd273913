"""What the weighted kernels share (``refit_int``, ``refine_zero``, ``dual_scale``): the
float64 sums in one fixed order and the magnitude weighting.

Every float64 sum runs in four interleaved partial sums (element ``i`` goes to lane
``i % 4``; lanes added as ``(l0 + l1) + (l2 + l3)``): a fixed order that the array-API
twins repeat exactly (``_reference_refit.lane_sum``), with four independent chains
instead of one long one. The magnitude weighting (``weighting == MAGNITUDE``) weighs an
element ``x`` of a group by ``rms + |x|``, the group's rms taken from the float64 squares
in that order and rounded to the compute type, where it is stored; its one home is here
(``magnitude_rms``, ``element_weight``), so the three kernels cannot drift apart.
"""

import numpy as np
from numba.extending import register_jitable

#: ``weighting`` codes of the kernels.
UNIFORM = 0
MAGNITUDE = 1

#: The number of interleaved partial sums of every float64 sum.
LANES = 4


@register_jitable
def lane_sum(buf, n):
    """``sum(buf[:n])`` (float64) in the lane order."""
    a0 = a1 = a2 = a3 = np.float64(0)
    n4 = n - n % 4
    for i in range(0, n4, 4):
        a0 += buf[i]
        a1 += buf[i + 1]
        a2 += buf[i + 2]
        a3 += buf[i + 3]
    for i in range(n4, n):
        k = i - n4
        if k == 0:
            a0 += buf[i]
        elif k == 1:
            a1 += buf[i]
        else:
            a2 += buf[i]
    return (a0 + a1) + (a2 + a3)


@register_jitable
def magnitude_rms(sq, n, cell):
    """The group's rms for the magnitude weighting, from its float64 squares ``sq[:n]``:
    ``sqrt(lane_sum(sq) / n)`` rounded to the compute type (the dtype of the one-element
    ``cell``, through which it is stored)."""
    cell[0] = np.sqrt(lane_sum(sq, n) / n)
    return cell[0]


@register_jitable
def element_weight(rms, x, weighting):
    """The float64 weight of element ``x`` (compute type): ``rms + |x|``, added in the
    compute type, under the magnitude weighting; 1 otherwise."""
    if weighting == MAGNITUDE:
        return np.float64(rms + abs(x))
    return np.float64(1)
