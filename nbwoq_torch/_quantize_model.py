"""``quantize_model``: every linear layer of a model fake-quantized in place by the core.

The counterpart of the reference's RTN entry point (``RTNQuantizer.convert``), without
calibration data and without replacing modules: each ``nn.Linear`` keeps its module and
its weight tensor, whose values become the dequantized codes (``quant_tensor(...,
return_int=False)``'s values). Like the reference, the output layer (names matching
``.*lm_head``, ``.*output_layer``, ``.*embed_out``) is left in float unless asked.
"""

import re

import numpy as np
import torch

from nbwoq import _validate
from nbwoq import hqq as _hqq
from nbwoq import refit as _refit
from nbwoq._importance import relative, weighted_error
from nbwoq_torch import _interop, _sinq
from nbwoq_torch.clip import search_clip
from nbwoq_torch.quantize import quant_tensor

#: How codes are decided: round to nearest (``nbwoq.quant_tensor``), the weighted
#: least-squares refit of each group's scale and zero point (``nbwoq.refit_int``), a
#: per-group clip ratio (``nbwoq.search_clip(per_group=True)``) before rounding,
#: HQQ's zero-point refinement (``nbwoq.refine_zero``, asym only), or a column scale
#: folded into each layer's feeder (``nbwoq.dual_scale``) before rounding.
METHODS = ("rtn", "refit", "clip", "hqq", "sinq")
#: The reference's ``LM_HEAD_NAMES``: layers left in float unless ``quant_lm_head``.
LM_HEAD_PATTERNS = (r".*lm_head", r".*output_layer", r".*embed_out")
_FLOATS = _sinq.FLOATS


def quantize_model(model, bits=4, group_size=128, scheme="asym", method="rtn", *, full_range=False,
                   quant_lm_head=False, weighting="magnitude", iterations=_refit.DEFAULT_ITERATIONS, plan=None,
                   example_inputs=None, activation_aware=False):
    """Fake-quantize every ``nn.Linear`` weight of ``model`` in place; no data needed.

    Each layer's weight is replaced, in its own memory, by the dequantized values of its
    integer group quantization, one layer at a time. The method decides the codes;
    every method keeps the layout of ``quant_tensor`` (codes, one scale and zero point
    per group), so a model quantized here can be stored by any writer of that layout.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place: the weights of its ``nn.Linear`` layers.
    bits : int, default 4
        1 to 16.
    group_size : int, default 128
        -1 or a positive integer, along the input features (as ``quant_tensor``).
    scheme : {"asym", "sym"}, default "asym"
    method : {"rtn", "refit", "clip", "hqq", "sinq"}, default "rtn"
        ``"rtn"``: ``nbwoq.quant_tensor``, the reference's round to nearest, bit for
        bit. ``"refit"``: ``nbwoq.refit_int`` (importance-weighted least-squares scales
        and zero points). ``"clip"``: each group's clip ratio from
        ``nbwoq.search_clip(per_group=True)``, then ``quant_tensor``. ``"hqq"``:
        ``nbwoq.refine_zero`` with HQQ's defaults (asym only: HQQ's lp zero-point
        iterations on round-to-nearest's scale, the zero rounded and kept where it
        lowers the group's lp error; ``weighting`` and ``iterations`` are not used).
        ``"sinq"``: for each group of the absorption plan (``plan``) whose consumers
        are all quantized here, the column scale of ``nbwoq.dual_scale`` folded into
        the feeder (a norm's weight, a linear feeder's rows and bias) with
        ``nbwoq.fold_column_scale``, so the float model is unchanged; then
        ``quant_tensor`` on every layer (layers without a partner: plain round to
        nearest).
    full_range : bool, default False
        Symmetric only: codes ``-2**(bits-1) .. 2**(bits-1) - 1``.
    quant_lm_head : bool, default False
        Also quantize the output layer. A weight it shares with another parameter (tied
        embeddings) is first given its own copy, as the reference does, so the
        embedding stays in float.
    weighting : {"magnitude", None}, default "magnitude"
        Element importance for ``"refit"`` and ``"clip"`` (see ``nbwoq.refit_int``).
    iterations : int, default 4
        Fits per group for ``"refit"``.
    plan : nbwoq.AbsorbPlan, optional
        For ``"sinq"``: the groups, by parameter name (``nbwoq_torch.absorb_plan`` or
        ``nbwoq.absorb_plan``). Left out: ``nbwoq_torch.absorb_plan(model,
        example_inputs)`` when ``example_inputs`` is given, else ``nbwoq.absorb_plan``
        from the parameter names and ``model.config`` (a Hugging Face model of a
        family it knows).
    example_inputs : optional
        One batch for tracing the plan (see ``plan``) and, with ``activation_aware``,
        for the inputs' statistics.
    activation_aware : bool, default False
        For ``"sinq"``: run ``example_inputs`` through the model once (before any
        change), weight each column's error by its input's mean square and search the
        power of the inputs' root mean square (AWQ's direction, powers -1 to 0.5)
        instead of the Sinkhorn factor. Random token ids are enough (no text: on
        SmolLM2, 256 of them closed about a quarter of RTN's perplexity gap at Q4_0;
        weights alone, almost nothing).

    Returns
    -------
    list of dict
        One entry per quantized weight, in module order (a weight shared by several
        layers is quantized once, under its first layer's name): ``name``, ``shape``
        (out_features, in_features), ``method``, ``rtn_error`` and ``error``: the
        relative importance-weighted squared error ``sum(w (x - q)**2) / sum(w x**2)``
        (``w = rms + |x|`` per group, the measure ``refit``, ``clip`` and ``sinq``
        minimize) of round to nearest and of the chosen method (equal for ``"rtn"``),
        against the weight as it was (for ``"sinq"``: the quantized folded weight with
        its scales divided back out).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, or a weight that is not a float tensor or holds NaN or Inf;
        raised before any weight changes.

    Examples
    --------
    >>> import torch
    >>> import nbwoq_torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    >>> report = nbwoq_torch.quantize_model(model, bits=4, group_size=128, method="refit")
    >>> [(r["name"], r["shape"]) for r in report]
    [('0', (64, 256)), ('2', (8, 64))]
    >>> all(r["error"] <= r["rtn_error"] for r in report)
    True
    >>> len(torch.unique(model[0].weight[0, :128]).tolist()) <= 16
    True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {METHODS}, got {method!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    bits = _validate.bits(bits)
    if bits <= 0:
        raise ValueError(f"bits must be from 1 to {_validate.MAX_BITS}, got {bits}")
    quant_lm_head = _validate.flag(quant_lm_head, "quant_lm_head")
    _refit._weighting(weighting)
    iterations = _refit._iterations(iterations)
    settings = dict(bits=bits, group_size=group_size, scheme=scheme, full_range=full_range)
    activation_aware = _validate.flag(activation_aware, "activation_aware")
    if method != "sinq" and (plan is not None or example_inputs is not None or activation_aware):
        raise ValueError(f"plan, example_inputs and activation_aware are for method='sinq', not {method!r}")
    if activation_aware and example_inputs is None:
        raise ValueError("activation_aware needs example_inputs (random token ids will do)")
    _probe(method, settings, weighting, iterations)
    layers = _layers(model, quant_lm_head)
    groups, scales = [], {}
    if method == "sinq":
        plan = _sinq.resolve_plan(model, plan, example_inputs)
        groups = _sinq.foldable_groups(model, plan, {f"{name}.weight" if name else "weight" for name, _ in layers})
    moments = None
    if groups and activation_aware:
        moments = _sinq.input_moments(model, sorted({c for g in groups for c in g.consumers}), example_inputs)
    _untie(model, layers)
    if groups:
        scales = _sinq.fold_sinq(model, groups, settings, weighting, moments)
    report, done = [], set()
    with torch.no_grad():
        for name, module in layers:
            weight = module.weight
            if id(weight) in done:  # shared by two quantized layers: quantized once
                continue
            done.add(id(weight))
            original = weight.detach().clone()
            if method == "sinq":
                row, col = scales.get(f"{name}.weight" if name else "weight", (None, None))
                source = _sinq.unfolded(original, row, col)
                rtn_error = relative(*weighted_error(source, quant_tensor(source.to(weight.dtype), **settings),
                                                     group_size))
                quant_tensor(weight, **settings)
                error = relative(*weighted_error(source, _sinq.unfolded(weight, row, col), group_size))
            elif method == "rtn":
                quant_tensor(weight, **settings)
                error = rtn_error = relative(*weighted_error(original, weight.detach(), group_size))
            else:
                rtn_error = relative(*weighted_error(original, quant_tensor(original.clone(), **settings),
                                                     group_size))
                _apply(method, module, settings, weighting, iterations)
                error = relative(*weighted_error(original, weight.detach(), group_size))
            report.append(dict(name=name, shape=tuple(weight.shape), method=method, rtn_error=rtn_error, error=error))
    return report


def _apply(method, module, settings, weighting, iterations):
    weight = module.weight
    if method == "refit":
        _interop.call(_refit.refit_int, weight, **settings, weighting=weighting, iterations=iterations,
                      return_int=False)
    elif method == "hqq":
        _interop.call(_hqq.refine_zero, weight, settings["bits"], settings["group_size"], settings["scheme"],
                      return_int=False)
    else:
        quantile = search_clip(module, settings["bits"], settings["group_size"], settings["scheme"],
                               enable_full_range=settings["full_range"], per_group=True, weighting=weighting)
        quant_tensor(weight, **settings, quantile=quantile)


def _probe(method, settings, weighting, iterations):
    """Run the chosen method once on a tiny weight, so that every bad argument and bad
    combination is refused before the model is touched."""
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    if method == "refit":
        _refit.refit_int(w, **settings, weighting=weighting, iterations=iterations, return_int=False)
        return
    if method == "hqq":
        _validate.flag(settings["full_range"], "full_range")
        _hqq.refine_zero(w, settings["bits"], settings["group_size"], settings["scheme"], return_int=False)
        return
    if method == "sinq":
        from nbwoq.dual import dual_scale

        dual_scale(w, **settings, weighting=weighting)
        return
    from nbwoq.clip import search_clip as core_search_clip
    from nbwoq.quantize import quant_tensor as core_quant_tensor

    if method == "clip":
        core_search_clip(w, settings["bits"], settings["group_size"], settings["scheme"],
                         enable_full_range=settings["full_range"], per_group=True, weighting=weighting)
    core_quant_tensor(w, **settings)


def _layers(model, quant_lm_head):
    """``[(name, module)]`` of the linear layers to quantize, each weight checked."""
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if not quant_lm_head and any(re.fullmatch(p, name) for p in LM_HEAD_PATTERNS):
            continue
        weight = module.weight
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"layer {name!r}: weight must be a 2-D tensor, got {type(weight).__name__}")
        if weight.dtype not in _FLOATS:
            raise TypeError(f"layer {name!r}: weight must be float16, bfloat16, float32 or float64, got {weight.dtype}")
        if weight.device.type == "meta":
            raise ValueError(f"layer {name!r}: weight is on the meta device (no values to quantize)")
        if not bool(torch.isfinite(weight).all()):
            raise ValueError(f"layer {name!r}: weight holds NaN or Inf")
        layers.append((name, module))
    return layers


def _untie(model, layers):
    """Give a quantized weight that is also another parameter (tied embeddings) its own
    copy; a weight shared only by quantized layers stays shared (and is quantized once)."""
    quantized = {f"{name}.weight" if name else "weight" for name, _ in layers}
    owners = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), set()).add(pname)
    for name, module in layers:
        if owners.get(id(module.weight), set()) - quantized:
            weight = module.weight
            module.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
