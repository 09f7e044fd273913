"""Column scales that cost nothing: where a scale on a layer's inputs can be folded.

A per-input-column scale ``s`` on a linear layer (SINQ's column axis, AWQ's and
SmoothQuant's smoothing) is free only when the operation that feeds the layer absorbs
it exactly: the feeder's output channels are multiplied by ``s`` and the consumers'
columns divided by it, so the model computes the same function and the file keeps its
standard layout. This module holds the plan's structure (``AbsorbGroup``,
``AbsorbPlan``), shared by the plan read from tensor names
(``nbwoq.formats.absorb_plan``) and the plan read from a torch model's graph
(``nbwoq_torch.absorb_plan``), and the fold itself on NumPy arrays
(``fold_column_scale``).

How a feeder absorbs (``AbsorbGroup.absorb``):

``"norm"``
    A norm whose output is ``normalized(x) * weight (+ bias)`` (Llama's RMSNorm, and
    every norm of a GGUF file): ``weight * s`` (and ``bias * s``).
``"norm_plus_one"``
    A norm whose output is ``normalized(x) * (1 + weight)`` (Hugging Face Gemma 2/3):
    ``(1 + weight) * s - 1``.
``"rows"``
    A linear layer whose output feeds the consumers through operations that are linear
    per channel (``up_proj`` through the gated product ``act(gate) * up``; ``v_proj``
    through attention, which mixes tokens, never channels): its rows (and bias) times
    ``s``. With grouped-query attention one ``v_proj`` row feeds the same channel of
    ``repeat`` query heads, so ``o_proj``'s column scale must be equal across those
    heads: the scale has one value per ``v_proj`` row, and ``o_proj``'s columns are
    divided by it repeated (``consumer_scale``).
"""

import re
from typing import NamedTuple

import numpy as np

from nbwoq import _arrays, _validate

#: How a feeder takes the scale; see the module docstring.
ABSORB_KINDS = ("norm", "norm_plus_one", "rows")


class AbsorbGroup(NamedTuple):
    """One feeder and the layers whose input columns it can scale.

    Attributes
    ----------
    feeder : str
        The tensor that takes the scale: a norm's 1-D weight, or a linear layer's
        2-D weight (its rows).
    absorb : {"norm", "norm_plus_one", "rows"}
        How it takes the scale (see ``ABSORB_KINDS``).
    consumers : tuple of str
        The 2-D weights whose columns are divided by the scale. They share one scale:
        the feeder's output reaches each of them.
    feeder_bias : str or None
        The feeder's bias, which takes the scale too (``v_proj.bias`` of Qwen2).
    repeat : int
        Consumer columns per feeder channel: 1, or with grouped-query attention the
        number of query heads that share one key/value head.
    block : int
        With ``repeat > 1``, the channels of one head (``head_dim``): feeder channel
        ``g * block + c`` feeds consumer columns ``(g * repeat + r) * block + c`` for
        ``r < repeat``. 0 when ``repeat`` is 1.
    """

    feeder: str
    absorb: str
    consumers: tuple
    feeder_bias: object = None
    repeat: int = 1
    block: int = 0


class AbsorbPlan(NamedTuple):
    """Which tensors can take a column scale, and from where.

    Attributes
    ----------
    groups : tuple of AbsorbGroup
        Sorted by feeder name (numbers compared as numbers).
    row_only : tuple of str
        Linear weights no group scales: only row-wise methods (their own group scales
        and zero points) apply to them. Sorted the same way.
    """

    groups: tuple
    row_only: tuple

    def group_of(self, name):
        """The group in which tensor ``name`` is a consumer, or None."""
        for group in self.groups:
            if name in group.consumers:
                return group
        return None


def natural_key(name):
    """Sort key of a tensor name with its numbers compared as numbers (layer 2 before 10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def make_plan(groups, linears):
    """An ``AbsorbPlan`` from ``groups`` and every linear weight name of the model
    (``linears``): those that are no group's consumer are row-only. Canonical order,
    so plans found by different means compare equal."""
    groups = [g._replace(consumers=tuple(sorted(g.consumers, key=natural_key))) for g in groups]
    consumed = {name for g in groups for name in g.consumers}
    row_only = sorted({name for name in linears if name not in consumed}, key=natural_key)
    return AbsorbPlan(tuple(sorted(groups, key=lambda g: natural_key(g.feeder))), tuple(row_only))


def _group(group):
    if not isinstance(group, AbsorbGroup):
        raise TypeError(f"group must be an AbsorbGroup, got {type(group).__name__}")
    if group.absorb not in ABSORB_KINDS:
        raise ValueError(f"group.absorb must be one of {ABSORB_KINDS}, got {group.absorb!r}")
    repeat = _validate.integer(group.repeat, "group.repeat")
    block = _validate.integer(group.block, "group.block")
    if repeat < 1 or (repeat > 1 and block < 1) or (repeat == 1 and block != 0):
        raise ValueError(f"group.repeat must be >= 1 and group.block >= 1 exactly when repeat > 1, got repeat "
                         f"{group.repeat!r}, block {group.block!r}")
    return repeat, block


def _scale(scale, channels=None):
    if not isinstance(scale, np.ndarray):
        raise TypeError(f"scale must be a NumPy array, got {type(scale).__name__}")
    if scale.ndim != 1 or scale.dtype.kind not in "fiu":
        raise ValueError(f"scale must be a 1-D array of real numbers, got shape {scale.shape}, dtype {scale.dtype}")
    if channels is not None and scale.shape[0] != channels:
        raise ValueError(f"scale must hold one value per feeder channel ({channels}), got {scale.shape[0]}")
    s = scale.astype(np.float64)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError("scale must be finite and positive (a positive scale commutes with relu-like steps and "
                         "keeps every code decision's sign)")
    return s


def consumer_scale(group, scale):
    """The column scale of ``group``'s consumers for feeder scale ``scale``.

    Parameters
    ----------
    group : AbsorbGroup
    scale : numpy.ndarray, shape (channels,)
        One positive value per feeder channel.

    Returns
    -------
    numpy.ndarray, float64, shape (channels * group.repeat,)
        ``scale`` itself (as float64) when ``repeat`` is 1; else each head's block
        repeated for the ``repeat`` query heads that read it.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq.absorb import AbsorbGroup, consumer_scale
    >>> g = AbsorbGroup("v", "rows", ("o",), repeat=2, block=2)
    >>> consumer_scale(g, np.array([1.0, 2.0, 3.0, 4.0])).tolist()
    [1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]
    """
    repeat, block = _group(group)
    s = _scale(scale)
    if repeat == 1:
        return s
    if s.shape[0] % block:
        raise ValueError(f"scale has {s.shape[0]} values, not a whole number of heads of {block}")
    return np.repeat(s.reshape(-1, block), repeat, axis=0).reshape(-1)


def _float_array(x, name, ndim):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.ndim != ndim or not _arrays.numpy_dtype_supported(x.dtype):
        raise ValueError(f"{name} must be a {ndim}-D float16, bfloat16, float32 or float64 array, got shape "
                         f"{x.shape}, dtype {x.dtype}")
    return x


def fold_column_scale(group, scale, feeder, consumers, feeder_bias=None):
    """Fold column scale ``scale`` into ``group``'s feeder and out of its consumers.

    The feeder's output channel ``i`` is multiplied by ``scale[i]`` and every consumer
    column reading it is divided by the same value, so the model computes the same
    function (to the rounding of the stored values). Each result is computed in
    float64 and rounded once to its input's dtype; the inputs are not changed.

    Parameters
    ----------
    group : AbsorbGroup
    scale : numpy.ndarray, shape (channels,)
        Positive and finite, one value per feeder channel (per ``v_proj`` row for a
        ``v_proj -> o_proj`` group: see ``consumer_scale``).
    feeder : numpy.ndarray
        The norm's weight, shape (channels,), or the linear feeder's weight, shape
        (channels, in_features).
    consumers : sequence of numpy.ndarray
        One weight of shape (out_features, channels * group.repeat) per name in
        ``group.consumers``, in that order.
    feeder_bias : numpy.ndarray, shape (channels,), optional
        Required exactly when ``group.feeder_bias`` names one.

    Returns
    -------
    feeder : numpy.ndarray
        ``weight * s`` (``"norm"``), ``(1 + weight) * s - 1`` (``"norm_plus_one"``) or
        ``weight * s[:, None]`` (``"rows"``).
    consumers : list of numpy.ndarray
        Each ``weight / consumer_scale(group, s)[None, :]``.
    feeder_bias : numpy.ndarray or None
        ``bias * s``, or None without a bias.

    Raises
    ------
    TypeError, ValueError
        For a bad group, a scale that is not positive and finite, or arrays whose
        shapes do not fit the group.

    Examples
    --------
    >>> import numpy as np
    >>> from nbwoq.absorb import AbsorbGroup, fold_column_scale
    >>> g = AbsorbGroup("input_layernorm.weight", "norm", ("q_proj.weight",))
    >>> norm, q = np.array([1.0, 2.0]), np.array([[1.0, 1.0], [4.0, 4.0]])
    >>> new_norm, (new_q,), _ = fold_column_scale(g, np.array([2.0, 0.5]), norm, [q])
    >>> new_norm.tolist(), new_q.tolist()
    ([2.0, 1.0], [[0.5, 2.0], [2.0, 8.0]])
    >>> x = np.array([3.0, 5.0])
    >>> bool(np.allclose(new_q @ (x * new_norm), q @ (x * norm)))
    True
    """
    repeat, block = _group(group)
    feeder = _float_array(feeder, "feeder", 2 if group.absorb == "rows" else 1)
    s = _scale(scale, feeder.shape[0])
    if not isinstance(consumers, (list, tuple)):
        raise TypeError(f"consumers must be a list or tuple of arrays, got {type(consumers).__name__}")
    if len(consumers) != len(group.consumers):
        raise ValueError(f"group has {len(group.consumers)} consumers, got {len(consumers)} arrays")
    cols = s.shape[0] * repeat
    for name, c in zip(group.consumers, consumers):
        _float_array(c, f"consumer {name!r}", 2)
        if c.shape[1] != cols:
            raise ValueError(f"consumer {name!r} must have {cols} columns (feeder channels x repeat), got shape "
                             f"{c.shape}")
    if (feeder_bias is None) != (group.feeder_bias is None):
        raise ValueError(f"group.feeder_bias is {group.feeder_bias!r}: pass feeder_bias exactly when the group "
                         "names one (a bias left out would not be scaled)")
    if feeder_bias is not None:
        _float_array(feeder_bias, "feeder_bias", 1)
        if feeder_bias.shape[0] != s.shape[0]:
            raise ValueError(f"feeder_bias must have {s.shape[0]} values, got {feeder_bias.shape[0]}")
    if repeat > 1 and s.shape[0] % block:
        raise ValueError(f"the feeder has {s.shape[0]} channels, not a whole number of heads of {block}")
    w = feeder.astype(np.float64)
    if group.absorb == "norm":
        new_feeder = w * s
    elif group.absorb == "norm_plus_one":
        new_feeder = (1.0 + w) * s - 1.0
    else:
        new_feeder = w * s[:, None]
    t = consumer_scale(group, s)
    new_consumers = [(c.astype(np.float64) / t[None, :]).astype(c.dtype) for c in consumers]
    new_bias = None if feeder_bias is None else (feeder_bias.astype(np.float64) * s).astype(feeder_bias.dtype)
    return new_feeder.astype(feeder.dtype), new_consumers, new_bias
