"""``search_clip`` on a torch module: the core's one-pass search over its weight."""

import torch

from nbwoq import clip as _core
from nbwoq_torch import _interop


def search_clip(m, bits=4, group_size=32, scheme="asym", dtype="int", enable_full_range=False, *, per_group=False,
                grid=None, weighting=None):
    """Clip ratio that minimizes the fake-quantization error of ``m.weight``.

    The weight is only read: no clone, no restore (the reference quantizes and restores
    it 40 times). A CPU weight is read in place by the Numba kernel (a non-contiguous one
    through a contiguous copy); a weight on another device by the array-API reference
    path on that device.

    Parameters
    ----------
    m : torch.nn.Module
        A module with a 2-D ``weight`` (``Linear``-like), left unchanged.
    bits : int, default 4
    group_size : int, default 32
    scheme : {"asym", "sym"}, default "asym"
    dtype : str, default "int"
    enable_full_range : bool, default False
    per_group : bool, default False
        New: the best ratio of every group, a (rows, n_groups) tensor to pass to
        ``quant_tensor`` as ``quantile``.
    grid : None, int or sequence of float, optional
        New: other candidates (see ``nbwoq.search_clip``); None means the reference's
        40 ratios ``1 - i / 200``.
    weighting : {None, "magnitude"}, default None
        New: ``"magnitude"`` weights each squared error by ``rms + |x|`` of its group
        (see ``nbwoq.search_clip``); None scores the plain error, as the reference does.

    Returns
    -------
    float or torch.Tensor
        The best ratio as a Python float (the candidate exactly), or with ``per_group``
        a tensor on the weight's device.

    Raises
    ------
    TypeError, ValueError
        ``m`` is not a module with a 2-D weight tensor, or an argument is bad.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import search_clip
    >>> m = torch.nn.Linear(64, 8)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)))
    >>> before = m.weight.detach().clone()
    >>> ratio = search_clip(m, bits=4, group_size=32)
    >>> isinstance(ratio, float), 0.805 <= ratio <= 1.0, torch.equal(m.weight, before)
    (True, True, True)
    """
    if not isinstance(m, torch.nn.Module):
        raise TypeError(f"m must be a torch.nn.Module, got {type(m).__name__}")
    weight = getattr(m, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"m must have a weight tensor, got {type(m).__name__} with weight {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"m.weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    return _interop.call(_core.search_clip, weight, writes=False, name="m.weight", bits=bits, group_size=group_size,
                         scheme=scheme, dtype=dtype, enable_full_range=enable_full_range, per_group=per_group,
                         grid=grid, weighting=weighting)
