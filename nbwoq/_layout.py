"""Group layout along the last axis: one home for the grouping and tail rule."""

from numba.extending import register_jitable


def group_layout(cols, group_size):
    """Effective group size and number of groups per row.

    ``group_size == -1`` or larger than ``cols`` means one group per row. Otherwise
    groups are consecutive runs of ``group_size`` columns, and when ``cols`` is not a
    multiple the remaining ``cols % group_size`` columns form one shorter last group.

    Returns
    -------
    size : int
        Columns in every group but a tail (group ``k`` spans ``[k*size, min((k+1)*size, cols))``).
    n_groups : int
        ``ceil(cols / size)``.
    """
    if group_size == -1 or group_size > cols:
        size = cols
    else:
        size = group_size
    if size == 0:  # zero columns: no groups at all
        return 1, 0
    return size, -(-cols // size)


@register_jitable(inline="always")
def group_segment(w, t, n_groups, size):
    """Task ``t`` of a kernel's ``rows * n_groups`` tasks (jitted code only).

    Returns ``(r, g, seg)``: the row, the group, and the group's columns of row ``r`` of
    ``w`` as a 1-D view (``group_layout``'s rule: group ``g`` spans
    ``[g*size, min((g+1)*size, cols))``, the last one possibly shorter).
    """
    r = t // n_groups
    g = t - r * n_groups
    start = g * size
    return r, g, w[r, start:min(start + size, w.shape[1])]
