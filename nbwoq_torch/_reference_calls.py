"""How the reference's own algorithms call the utility module, read the way the reference reads it.

Intel Neural Compressor's RTN, AWQ, TEQ and GPTQ (``neural_compressor.torch.algorithms.
weight_only``, 3.10) are the real clients of the module nbwoq_torch replaces. Three of
their habits need a rule of their own here, kept in one place (SPEC deviation 7):

- ``quant_weight_w_scale`` has two call forms, the seed's ``(weight, scale, zp=None,
  group_size=-1, dtype="int")`` and 3.10's ``(weight, scale, scale_bf16_to_fp8, zp=None,
  group_size=-1, dtype="int", fp8_aware=False)``; :func:`resolve_w_scale_call` decides
  which one a call uses (the rule is in its docstring).
- AWQ and TEQ pass ``num_bits=`` and ``data_type=`` to ``quant_tensor``, and AWQ (through
  RTN) a bool ``double_quant_scheme`` while double quantization is off. The reference
  never reads those keywords, so it quantizes at its defaults; :func:`drop_ignored_keywords`
  drops exactly these, with a one-time warning, so the numbers are the reference's. Any
  other unknown keyword still reaches the core, which raises ``TypeError``.
- ``fp8_aware=True`` first passes the weight through float8 (:func:`fp8_prescale`).
- GPTQ on ``transformers`` ``Conv1D`` layers (GPT-2) passes some layers a scale (and zero
  point) transposed, shape ``(1, rows)``: its export loop transposes another layer's scale
  in place. The reference's torch arithmetic broadcasts it; :func:`broadcast_like_reference`
  turns any scale the reference broadcasts into the ``(rows, n_groups)`` one that gives the
  same numbers, with a one-time warning.
"""

from __future__ import annotations

import inspect
import threading
import warnings

import torch

# Keywords the reference's callers pass that the reference never reads.
IGNORED_KEYWORDS = ("num_bits", "data_type")

_warned = set()
_warned_lock = threading.Lock()


def _warn_once(keyword, function_name, detail):
    with _warned_lock:
        if (function_name, keyword) in _warned:
            return
        _warned.add((function_name, keyword))
    warnings.warn(
        f"{function_name}(): keyword {keyword!r} is ignored ({detail}); the reference ignores it too, "
        "so the result is the reference's. This warning is shown once.",
        UserWarning,
        stacklevel=4,
    )


def drop_ignored_keywords(function_name, kwargs):
    """``kwargs`` without the reference's silently ignored misspellings.

    Parameters
    ----------
    function_name : str
        For the warning.
    kwargs : dict
        The keyword arguments of a public call; not modified.

    Returns
    -------
    dict
        ``kwargs`` less ``num_bits`` and ``data_type`` (the reference's names are ``bits``
        and ``dtype``) and less a bool ``double_quant_scheme`` when ``double_quant`` is off
        (the reference reads the scheme only when double quantizing). Each dropped keyword
        warns once per process and function.
    """
    dropped = [key for key in IGNORED_KEYWORDS if key in kwargs]
    scheme = kwargs.get("double_quant_scheme")
    bool_scheme = isinstance(scheme, bool) and not kwargs.get("double_quant", False)
    if not dropped and not bool_scheme:
        return kwargs
    kept = dict(kwargs)
    for key in dropped:
        kept.pop(key)
        right = "bits" if key == "num_bits" else "dtype"
        _warn_once(key, function_name, f"a misspelling of {right!r}")
    if bool_scheme:
        kept.pop("double_quant_scheme")
        _warn_once("double_quant_scheme", function_name,
                   f"a bool ({scheme!r}) while double_quant is off, where no scheme is used")
    return kept


_SEED_FORM = inspect.Signature([
    inspect.Parameter("weight", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("scale", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("zp", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("group_size", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=-1),
    inspect.Parameter("dtype", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="int"),
    inspect.Parameter("bits", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("scale_bf16_to_fp8", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("fp8_aware", inspect.Parameter.KEYWORD_ONLY, default=False),
])
_REFERENCE_FORM = inspect.Signature([
    inspect.Parameter("weight", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("scale", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("scale_bf16_to_fp8", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("zp", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("group_size", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=-1),
    inspect.Parameter("dtype", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="int"),
    inspect.Parameter("fp8_aware", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False),
    inspect.Parameter("bits", inspect.Parameter.KEYWORD_ONLY, default=None),
])
# What ``inspect.signature(quant_weight_w_scale)`` shows: the seed's form, plus the new
# keywords after it.
PUBLIC_SIGNATURE = _SEED_FORM


def is_reference_form(args, kwargs):
    """Whether a call's arguments after ``weight, scale`` follow 3.10's form.

    The seed's third positional argument is ``zp``, 3.10's is ``scale_bf16_to_fp8``; both
    are a tensor or None, so the call's other arguments decide:

    1. a fourth positional argument that is a tensor or None is 3.10's ``zp`` (the seed's
       fourth, ``group_size``, is an int): 3.10's form;
    2. a third positional argument together with ``zp=`` by keyword: 3.10's form (the seed's
       would bind ``zp`` twice);
    3. a third positional argument together with ``fp8_aware=`` but without
       ``scale_bf16_to_fp8=`` by keyword: 3.10's form;
    4. anything else, the seed's form. In particular ``(weight, scale, t)`` alone reads
       ``t`` as the zero point, as it always did; with ``t`` None, or ``fp8_aware`` off,
       both forms give the same result anyway.
    """
    extra = args[2:]
    if len(extra) >= 2 and (extra[1] is None or isinstance(extra[1], torch.Tensor)):
        return True
    if len(extra) >= 1 and "zp" in kwargs:
        return True
    return len(extra) >= 1 and "fp8_aware" in kwargs and "scale_bf16_to_fp8" not in kwargs


def resolve_w_scale_call(args, kwargs):
    """Bind a ``quant_weight_w_scale`` call to named arguments (see :func:`is_reference_form`).

    Returns
    -------
    dict
        ``weight, scale, zp, group_size, dtype, bits, scale_bf16_to_fp8, fp8_aware``.

    Raises
    ------
    TypeError
        For a call that fits neither form, naming the form it was read in.
    """
    reference = is_reference_form(args, kwargs)
    form = _REFERENCE_FORM if reference else _SEED_FORM
    try:
        bound = form.bind(*args, **kwargs)
    except TypeError as error:
        which = "3.10's (weight, scale, scale_bf16_to_fp8, zp, group_size, dtype, fp8_aware)" if reference \
            else "the seed's (weight, scale, zp, group_size, dtype, bits)"
        raise TypeError(f"quant_weight_w_scale(): {error} (call read in {which} form)") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def fp8_prescale(weight, scale_bf16_to_fp8):
    """3.10's ``fp8_aware`` step, as the reference computes it, on a float32 copy.

    ``weight * (1 / scale_bf16_to_fp8)`` in the weight's dtype, clamped to the float8
    E4M3 protective range (``max - max / 15`` of ``float8_e4m3fnuz``), rounded through
    ``float8_e4m3fn`` and widened to float32.
    """
    if not isinstance(scale_bf16_to_fp8, torch.Tensor):
        raise TypeError(
            "quant_weight_w_scale(): fp8_aware=True needs scale_bf16_to_fp8 as a tensor, "
            f"got {type(scale_bf16_to_fp8).__name__}"
        )
    fullscale = torch.finfo(torch.float8_e4m3fnuz).max
    protective_range = fullscale - (fullscale / 15)
    # In place on a copy, as the reference's ``mul_``: the product stays in the weight's dtype.
    scaled = weight.detach().clone().mul_(1 / scale_bf16_to_fp8.to(weight.device))
    scaled = torch.clamp(scaled, min=-protective_range, max=protective_range)
    return scaled.to(torch.float8_e4m3fn).to(torch.float32)


def _reference_columns(param, rows, cols, group_size):
    """``param`` as the ``(rows, n_groups)`` tensor (and its group size) the reference's
    arithmetic effectively uses, or None where the reference would fail too.

    The reference divides by ``scale[:, i].unsqueeze(1)`` for group ``i``, by
    ``scale[:, -1].unsqueeze(1)`` for a short last group, and with ``group_size=-1`` by
    ``scale`` itself, each broadcast by torch against the weight's slice.
    """
    if group_size == -1:
        try:
            if torch.broadcast_shapes(param.shape, (rows, cols)) != (rows, cols):
                return None
        except RuntimeError:
            return None
        if param.dim() == 2 and param.shape[1] == 1:  # one column: per-row (or per-tensor)
            return param.expand(rows, 1).contiguous(), -1
        return param.expand(rows, cols).contiguous(), 1  # per element, as torch divides
    full, tail = divmod(cols, group_size)
    if param.dim() != 2 or param.shape[0] not in (1, rows) or param.shape[1] < max(full, 1):
        return None
    columns = list(range(full)) + ([param.shape[1] - 1] if tail else [])
    return param[:, columns].expand(rows, len(columns)).contiguous(), group_size


def broadcast_like_reference(weight, scale, zp, group_size):
    """The ``(scale, zp, group_size)`` that give the reference's numbers for scale and zero
    point shapes that are not ``(rows, n_groups)`` but that the reference's arithmetic
    broadcasts (one row for every row; extra columns; a per-column scale with
    ``group_size=-1``). Anything else is returned unchanged, for the core to refuse.

    Warns once per process when it changes anything.
    """
    if (not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not isinstance(scale, torch.Tensor)
            or not (zp is None or isinstance(zp, torch.Tensor)) or isinstance(group_size, bool)
            or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0)):
        return scale, zp, group_size
    rows, cols = weight.shape
    if rows == 0 or cols == 0:  # nothing to broadcast over: the core judges the shapes
        return scale, zp, group_size
    n_groups = 1 if group_size == -1 else -(-cols // group_size)
    if tuple(scale.shape) == (rows, n_groups) and (zp is None or tuple(zp.shape) == (rows, n_groups)):
        return scale, zp, group_size
    new_scale = _reference_columns(scale, rows, cols, group_size)
    new_zp = None if zp is None else _reference_columns(zp, rows, cols, group_size)
    if new_scale is None or (zp is not None and new_zp is None):
        return scale, zp, group_size
    effective = 1 if new_scale[1] == 1 or (new_zp is not None and new_zp[1] == 1) else group_size
    if effective == 1:  # one of them per element: both per element (from the columns the reference reads)
        new_scale = (new_scale[0].expand(rows, cols).contiguous(), 1)
        new_zp = None if zp is None else (new_zp[0].expand(rows, cols).contiguous(), 1)
    with _warned_lock:
        first = ("quant_weight_w_scale", "broadcast") not in _warned
        _warned.add(("quant_weight_w_scale", "broadcast"))
    if first:
        shapes = f"scale {tuple(scale.shape)}" + ("" if zp is None else f" and zp {tuple(zp.shape)}")
        warnings.warn(
            f"quant_weight_w_scale(): {shapes} for a {tuple(weight.shape)} weight with group_size {group_size} "
            f"is not (rows, n_groups) = {(rows, n_groups)}; it is broadcast as the reference's torch arithmetic "
            "broadcasts it, so the result is the reference's (the reference's GPTQ passes such a transposed scale "
            "to some transformers Conv1D layers). This warning is shown once.",
            UserWarning,
            stacklevel=3,
        )
    return new_scale[0], None if zp is None else new_zp[0], effective
