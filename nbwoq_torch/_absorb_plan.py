"""The absorption plan of a torch model, read from its traced graph.

The same plan ``nbwoq.absorb_plan`` reads from tensor names (``nbwoq.AbsorbPlan``, with
parameter names), found on the model itself:

1. the seed's absorb walk (:func:`get_absorb_layers`'s, on one trace): a layer's input
   produced by a norm whose output is ``weight * ...`` or by a linear layer, through
   relu-like steps and casts, with no other consumer;
2. for the layers it leaves without a partner, three exact folds the seed's tables do
   not express: a norm whose output is ``(1 + weight) * ...`` (Gemma's, found by
   running the module), reached through casts such as ``type_as``; a linear layer
   feeding one operand of an elementwise product whose only consumers are the layers
   (``act(gate) * up`` -> ``down_proj``); and a linear layer feeding the value operand
   of attention (``scaled_dot_product_attention``, or the second operand of the
   ``probs @ value`` product) through layout steps only, whose output reaches only the
   layers, again through layout steps (``v_proj`` -> ``o_proj``). The attention
   pairing takes the head layout from the two layers' shapes and the model's config
   (``head_dim``, else ``hidden_size // num_attention_heads``): one value row feeds
   ``o_proj.in_features // v_proj.out_features`` query heads.
"""

import logging

import torch

from nbwoq.absorb import AbsorbGroup, make_plan
from nbwoq_torch._graph import GraphTrace, _check_backend, _BACKENDS
from nbwoq_torch._modules import get_module

logger = logging.getLogger(__name__)

# Steps a scale passes unchanged: the seed's skip ops (positive scales commute with
# them) and casts.
_PASS = frozenset({"aten::to", "aten::type_as", "aten::relu", "aten::leaky_relu", "aten::hardtanh"})
# Steps that move channels around without mixing them: between v_proj and attention,
# and between attention and o_proj. Slices must take everything (checked).
_LAYOUT = _PASS | frozenset({
    "aten::view", "aten::reshape", "aten::_unsafe_view", "aten::transpose", "aten::permute", "aten::contiguous",
    "aten::clone", "aten::expand", "aten::unsqueeze", "aten::slice", "aten::alias", "aten::detach",
})
# Attention operators and the position of their value operand.
_VALUE_INPUT = {"aten::scaled_dot_product_attention": 2, "aten::matmul": 1, "aten::bmm": 1}
_IGNORED_USERS = frozenset({"aten::size"})
_WHOLE = 1 << 62


def absorb_plan(model, example_inputs, backend="auto"):
    """The absorption plan of ``model``, found on its traced graph.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not modified).
    example_inputs : torch.Tensor, tuple, list or dict
        One batch, as for :func:`get_absorb_layers`.
    backend : {"auto", "torchscript", "export"}, optional
        As for :func:`get_absorb_layers`: ``"auto"`` tries TorchScript, then
        ``torch.export``.

    Returns
    -------
    nbwoq.AbsorbPlan
        Groups and row-only weights by parameter name (``"model.layers.0.mlp.up_proj.weight"``),
        in the canonical order of ``nbwoq.absorb_plan``. When no backend can trace the
        model, no groups and every ``nn.Linear`` weight row-only.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ValueError
        If ``backend`` is unknown.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import absorb_plan
    >>> model = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 16), torch.nn.ReLU(),
    ...                             torch.nn.Linear(16, 4)).eval()
    >>> plan = absorb_plan(model, torch.randn(2, 8))
    >>> [(g.feeder, g.absorb, g.consumers, g.feeder_bias) for g in plan.groups]
    [('0.weight', 'norm', ('1.weight',), '0.bias'), ('1.weight', 'rows', ('3.weight',), '1.bias')]
    >>> plan.row_only
    ()
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_backend(backend, allow_auto=True)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    weight_names = [f"{name}.weight" for name in linears]
    tracer = GraphTrace()
    graph = None
    for name in _BACKENDS if backend == "auto" else (backend,):
        traced = tracer.trace(model, example_inputs, backend=name)
        if traced is not None:
            graph = tracer._graph_of(traced)
            break
    if graph is None:
        logger.warning("no graph: every linear layer is row-only")
        return make_plan([], weight_names)
    groups, consumed = [], set()

    def add(feeder_name, kind, layer_names, repeat=1, block=0):
        feeder = get_module(model, feeder_name)
        bias = getattr(feeder, "bias", None)
        groups.append(AbsorbGroup(f"{feeder_name}.weight", kind, tuple(f"{n}.weight" for n in layer_names),
                                  f"{feeder_name}.bias" if isinstance(bias, torch.Tensor) else None, repeat, block))
        consumed.update(layer_names)

    # 1. The seed's walk.
    absorb_to_layer, _ = tracer._absorb_on_graph(model, graph, ["Linear"])
    for absorber, layer_names in absorb_to_layer.items():
        if not all(n in linears for n in layer_names):
            continue
        kind = _feeder_kind(get_module(model, absorber), {linears[n].in_features for n in layer_names})
        if kind is not None:
            add(absorber, kind, layer_names)
    # 2. What it leaves.
    nodes = [n for n in graph.nodes if n.kind == "aten::linear" and n.module_name in linears]
    for node in nodes:
        if node.module_name in consumed:
            continue
        found = _norm_plus_one(model, node, linears) or _gated(model, node, linears) or _attention(model, node, linears)
        if found is not None:
            add(*found)
    return make_plan(groups, weight_names)


def _feeder_kind(module, widths):
    """``"rows"`` / ``"norm"`` / ``"norm_plus_one"``: how ``module`` takes a scale on its
    output channels (``widths``: the consumers' input widths, which must all equal them)."""
    if isinstance(module, torch.nn.Linear):
        return "rows" if widths == {module.out_features} else None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or widths != {weight.numel()}:
        return None
    return _norm_kind(module)


def _norm_kind(module):
    """Whether ``module(x)`` scales by ``f`` when its weight (and bias) are set to fold
    ``f``: as ``weight * f`` (``"norm"``), as ``(1 + weight) * f - 1``
    (``"norm_plus_one"``), or neither (None). Checked by running it."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1 or not weight.is_floating_point():
        return None
    if weight.device.type == "meta":
        return None
    params = dict(module.named_parameters(recurse=False))
    bias = getattr(module, "bias", None)
    bias_name = next((k for k, p in params.items() if p is bias), None) if isinstance(bias, torch.Tensor) else None
    weight_name = next((k for k, p in params.items() if p is weight), None)
    if weight_name is None:
        return None
    generator = torch.Generator().manual_seed(0)
    n = weight.numel()
    x = torch.randn(2, n, generator=generator).to(weight.device, weight.dtype)
    f = (torch.rand(n, generator=generator) + 0.5).to(weight.device, weight.dtype)
    for kind, folded in (("norm", weight * f), ("norm_plus_one", (1 + weight) * f - 1)):
        changed = {weight_name: folded}
        if bias_name is not None:
            changed[bias_name] = bias * f
        try:
            with torch.no_grad():
                base = torch.func.functional_call(module, params, (x,))
                out = torch.func.functional_call(module, {**params, **changed}, (x,))
        except Exception:  # a module that cannot run on a (2, C) input is no norm
            return None
        if not isinstance(base, torch.Tensor) or not isinstance(out, torch.Tensor) or base.shape != x.shape:
            return None
        if torch.allclose(out.float(), (base * f).float(), rtol=1e-3, atol=1e-5):
            return kind
    return None


def _walk(node, kinds):
    """``node``, or walking up data inputs through ``kinds`` steps, the first other node."""
    while node is not None and node.kind in kinds and _passes(node):
        node = node.inputs[0] if node.inputs else None
    return node


def _up(node, kinds):
    """The producer of ``node``'s data input, walking up through ``kinds`` steps."""
    return _walk(node.inputs[0] if node.inputs else None, kinds)


def _passes(node):
    return node.kind != "aten::slice" or _whole_slice(node)


def _whole_slice(node):
    """Whether an ``aten::slice`` keeps every element (``x[:, :, None]`` writes some)."""
    origin = node.origin
    try:
        if isinstance(origin, torch._C.Node):
            args = [value.toIValue() for value in list(origin.inputs())[1:]]
        else:
            args = list(origin.args[1:])
    except Exception:  # an argument computed in the graph: not provably whole
        return False
    start = args[1] if len(args) > 1 else None
    end = args[2] if len(args) > 2 else None
    step = args[3] if len(args) > 3 else 1
    return start in (None, 0) and (end is None or end >= _WHOLE) and step == 1


def _reaches(node, kinds):
    """The non-ignored consumers of ``node``'s output, through ``kinds`` steps, as
    ``(consumer, input position)``; None when a step takes it in another position."""
    found = []
    for user in node.users:
        if user.kind in _IGNORED_USERS:
            continue
        positions = [i for i, source in enumerate(user.inputs) if source is node]
        if user.kind in kinds and _passes(user):
            if positions != [0]:
                return None
            below = _reaches(user, kinds)
            if below is None:
                return None
            found += below
        else:
            found += [(user, i) for i in positions]
    return found


def _linear_consumers(node, kinds, linears):
    """Module names of the linear layers that are the only consumers of ``node`` (as
    their data input, through ``kinds``), or None."""
    reached = _reaches(node, kinds)
    if not reached:
        return None
    names = []
    for user, position in reached:
        if user.kind != "aten::linear" or position != 0 or user.module_name not in linears:
            return None
        names.append(user.module_name)
    return list(dict.fromkeys(names))


def _norm_plus_one(model, node, linears):
    parent = _up(node, _PASS)
    if parent is None or not parent.module_name:
        return None
    module = get_module(model, parent.module_name)
    layers = _linear_consumers(parent, _PASS, linears)
    if not layers or _feeder_kind(module, {linears[n].in_features for n in layers}) != "norm_plus_one":
        return None
    return parent.module_name, "norm_plus_one", layers


def _gated(model, node, linears):
    """``down(act(gate(x)) * up(x))``: the scale goes into ``up``'s rows."""
    product = _up(node, _PASS)
    if product is None or product.kind != "aten::mul" or len(product.inputs) < 2:
        return None
    layers = _linear_consumers(product, _PASS, linears)
    if not layers:
        return None
    for operand in reversed(product.inputs[:2]):
        source = _walk(operand, _PASS)
        if source is None or source.kind != "aten::linear" or source.module_name not in linears:
            continue
        # The feeder's output must reach nothing but this operand of the product.
        if _reaches(source, _PASS) != [(product, product.inputs.index(operand))]:
            continue
        if _feeder_kind(linears[source.module_name], {linears[n].in_features for n in layers}) == "rows":
            return source.module_name, "rows", layers
    return None


def _attention(model, node, linears):
    """``o_proj(attention(q, k, v_proj(x)))``: the scale goes into ``v_proj``'s rows."""
    attention = _up(node, _LAYOUT)
    position = _VALUE_INPUT.get(attention.kind) if attention is not None else None
    if position is None or len(attention.inputs) <= position or attention.inputs[position] is None:
        return None
    source = _walk(attention.inputs[position], _LAYOUT)
    if source is None or source.kind != "aten::linear" or source.module_name not in linears:
        return None
    if _reaches(source, _LAYOUT) != [(attention, position)]:
        return None
    layers = _linear_consumers(attention, _LAYOUT, linears)
    if not layers:
        return None
    feeder = linears[source.module_name]
    widths = {linears[n].in_features for n in layers}
    if len(widths) != 1:
        return None
    (width,) = widths
    rows = feeder.out_features
    if width == rows:
        return source.module_name, "rows", layers
    head_dim = _head_dim(model)
    if head_dim is None or width % rows or rows % head_dim:
        return None
    return source.module_name, "rows", layers, width // rows, head_dim


def _head_dim(model):
    config = getattr(model, "config", None)
    head_dim = getattr(config, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None
