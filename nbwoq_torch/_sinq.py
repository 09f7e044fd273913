"""``quantize_model(method="sinq")``'s fold: a column scale per absorb group, before RTN.

For every group of the absorption plan whose consumers are all layers being quantized,
``nbwoq.dual_scale`` finds the scale on the consumers' weights and
``nbwoq.fold_column_scale`` moves it into the feeder (a norm's weight, or a linear
feeder's rows and bias) and out of the consumers, in place: the float model computes
the same function (to float rounding), and round to nearest then quantizes the folded
weights. Layers no group reaches keep plain round to nearest.
"""

import numpy as np
import torch

from nbwoq.absorb import AbsorbPlan, consumer_scale, fold_column_scale
from nbwoq.absorb import _group as check_group
from nbwoq.dual import dual_scale
from nbwoq_torch import _interop

#: Parameter dtypes a fold reads and writes (``fold_column_scale``'s).
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_plan(model, plan, example_inputs):
    """The plan to fold with: ``plan`` as given, else the traced graph's (with
    ``example_inputs``), else the names' (a Hugging Face model of a known family)."""
    if plan is not None:
        if not isinstance(plan, AbsorbPlan):
            raise TypeError(f"plan must be an nbwoq.AbsorbPlan, got {type(plan).__name__}")
        return plan
    if example_inputs is not None:
        from nbwoq_torch._absorb_plan import absorb_plan

        return absorb_plan(model, example_inputs)
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    need = ("method='sinq' needs an absorption plan: pass plan= (nbwoq.absorb_plan or nbwoq_torch.absorb_plan) "
            "or example_inputs=, or a Hugging Face model of a family nbwoq.absorb_plan knows")
    if not isinstance(family, str):
        raise ValueError(f"{need}; this model has no config.model_type")
    import nbwoq  # the public name-based plan (the formats layer's, re-exported by the package)

    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    try:
        return nbwoq.absorb_plan(names, family, heads=heads, kv_heads=kv if heads else None,
                                 head_dim=head_dim if heads and kv < heads else None)
    except ValueError as exc:
        raise ValueError(f"{need}: {exc}") from None


def _parameter(model, name):
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise ValueError(f"plan names {name!r}, which is not a parameter of the model") from None


def foldable_groups(model, plan, quantized):
    """The plan's groups whose consumers are all in ``quantized`` (parameter names),
    each checked against the model's parameters before anything changes: everything
    ``fold_sinq`` would otherwise refuse after folding the groups before it."""
    groups = []
    for group in plan.groups:
        try:  # what fold_column_scale and dual_scale would refuse mid-way, after earlier folds
            repeat, block = check_group(group)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"plan: {exc}") from None
        if not all(c in quantized for c in group.consumers):
            continue
        if not group.consumers:
            raise ValueError(f"plan: feeder {group.feeder!r} has no consumers")
        feeder = _parameter(model, group.feeder)
        want = 2 if group.absorb == "rows" else 1
        if feeder.dim() != want:
            raise ValueError(f"plan: feeder {group.feeder!r} of kind {group.absorb!r} must be {want}-D, got shape "
                             f"{tuple(feeder.shape)}")
        if feeder.dtype not in FLOATS:
            raise TypeError(f"plan: feeder {group.feeder!r} must be a float tensor, got {feeder.dtype}")
        if repeat > 1 and feeder.shape[0] % block:
            raise ValueError(f"plan: feeder {group.feeder!r} has {feeder.shape[0]} channels, not a whole number of "
                             f"heads of {block}")
        if len({_parameter(model, c).dtype for c in group.consumers}) > 1:
            raise ValueError(f"plan: the consumers of {group.feeder!r} differ in dtype (dual_scale stacks them)")
        for c in group.consumers:
            shape = tuple(_parameter(model, c).shape)
            if shape[1] != feeder.shape[0] * repeat:
                raise ValueError(f"plan: consumer {c!r} of shape {shape} does not read the {feeder.shape[0]} "
                                 f"channels of {group.feeder!r} (x {repeat})")
        if group.feeder_bias is not None:
            bias = _parameter(model, group.feeder_bias)
            if tuple(bias.shape) != (feeder.shape[0],) or bias.dtype not in FLOATS:
                raise ValueError(f"plan: bias {group.feeder_bias!r} does not match {group.feeder!r}")
        groups.append(group)
    return groups


#: Powers tried with the inputs' root mean square as the direction: negative ones scale
#: the columns with the larger inputs up (AWQ's way), positive ones down.
ACTIVATION_ALPHAS = (-1.0, -0.75, -0.5, -0.25, 0.25, 0.5)


def input_moments(model, names, example_inputs):
    """Mean square per input column of each layer whose weight is named in ``names``,
    over one forward pass of ``example_inputs`` (float64 NumPy, by weight name; layers
    the pass does not reach are left out)."""
    from nbwoq_torch._batches import _model_device, forward_wrapper

    sums, counts, hooks = {}, {}, []
    for name in names:
        def hook(module, args, name=name):
            x = args[0].detach().to(torch.float64).reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append(model.get_submodule(name.rsplit(".", 1)[0]).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            forward_wrapper(model, example_inputs, device=_model_device(model))
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / max(counts[name], 1)).cpu().numpy() for name in sums}


def _activation_options(group, moments):
    """``dual_scale``'s keywords for a group whose consumers' input moments are known:
    the moments as column weights, their root (tied columns averaged) as the direction."""
    m = moments.get(group.consumers[0])
    if m is None or not np.all(np.isfinite(m)):
        return {}
    m = m + np.max(m) * 1e-12 + 1e-300  # a column that never fires keeps a positive direction
    d = m if group.repeat == 1 else m.reshape(-1, group.repeat, group.block).mean(axis=1).reshape(-1)
    return dict(column_weights=m, direction=np.sqrt(d), alphas=ACTIVATION_ALPHAS)


def _numpy(param):
    """A float NumPy copy of ``param`` (bfloat16 kept as ``ml_dtypes.bfloat16``)."""
    return _interop.to_numpy(param.detach().cpu().clone())


def _write(param, array):
    param.data.copy_(_interop.to_torch(np.ascontiguousarray(array)).to(param.device))


def fold_sinq(model, groups, settings, weighting, moments=None):
    """Fold ``dual_scale``'s scale into each group, in place (with ``moments``, by weight
    name, activation-aware: see ``_activation_options``); a group whose folded values
    would overflow their dtype is left unfolded (its layers get plain round to nearest). Returns per parameter name
    ``(row, col)``: the float64 scales its rows were multiplied and its columns divided
    by (None where untouched), so that ``quantized * col / row`` is in the original's
    terms."""
    scales = {}
    for group in groups:
        feeder = _parameter(model, group.feeder)
        consumers = [_parameter(model, c) for c in group.consumers]
        arrays = [_numpy(c) for c in consumers]
        extra = {} if moments is None else _activation_options(group, moments)
        found = dual_scale(arrays, **settings, repeat=group.repeat, block=group.block, weighting=weighting, **extra)
        bias = None if group.feeder_bias is None else _parameter(model, group.feeder_bias)
        with np.errstate(over="ignore"):  # checked below
            new_feeder, new_consumers, new_bias = fold_column_scale(
                group, found.scale, _numpy(feeder), arrays, None if bias is None else _numpy(bias))
        if not all(np.isfinite(a.astype(np.float32)).all()
                   for a in (new_feeder, *new_consumers, *(() if new_bias is None else (new_bias,)))):
            continue  # a half overflowed (a norm weight of 100 times 1e3 in float16): the group stays as it was
        with torch.no_grad():
            _write(feeder, new_feeder)
            for param, array in zip(consumers, new_consumers):
                _write(param, array)
            if bias is not None:
                _write(bias, new_bias)
        col = consumer_scale(group, found.scale)
        for name in group.consumers:
            scales[name] = (scales.get(name, (None, None))[0], col)
        if group.absorb == "rows":
            scales[group.feeder] = (found.scale, scales.get(group.feeder, (None, None))[1])
    return scales


def unfolded(weight, row, col):
    """``weight * col / row`` in float64 (the folded weight in the original's terms)."""
    w = weight.detach().to(torch.float64)
    if col is not None:
        w = w * torch.from_numpy(col).to(w.device)[None, :]
    if row is not None:
        w = w / torch.from_numpy(row).to(w.device)[:, None]
    return w
