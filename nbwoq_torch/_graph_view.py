"""The graph view the absorb walk runs on, built from either tracing backend.

:class:`GraphNode` is one operator with its producers and consumers. Two builders
fill it:

- :func:`_graph_from_torchscript`: a frozen ``torch.jit.ScriptModule``; module
  names come from the nodes' scope names.
- :func:`_graph_from_export`: a ``torch.export.ExportedProgram`` (of the model
  wrapped in :class:`_TensorOutputs`); module names come from the nodes'
  ``nn_module_stack``.

Both name operators the TorchScript way (``"aten::linear"``), so the reference's
kind lists apply to either. :func:`_fuse_conv1d` folds GPT-2's ``Conv1D``
(``view -> addmm -> view``) into one node.
"""

from __future__ import annotations

import re

import torch

__all__ = ["GraphNode"]

# transformers' GPT-2 style ``Conv1D`` computes ``addmm(bias, x.view(-1, C), W)``
# and views the result back. The three nodes are fused into one node of this
# kind, so the absorb walk sees a single linear-like layer (see _fuse_conv1d).
_CONV1D_KIND = "nbwoq::conv1d"
_RESHAPE_KINDS = frozenset({"aten::view", "aten::reshape", "aten::_unsafe_view"})

# torch.export names some operators differently from a frozen TorchScript
# graph; mapping them keeps the reference's kind lists valid for both.
_EXPORT_KIND_ALIASES = {
    "aten::_to_copy": "aten::to",
    "aten::sym_size": "aten::size",
    "aten::conv1d": "aten::_convolution",
    "aten::conv2d": "aten::_convolution",
    "aten::conv3d": "aten::_convolution",
    "aten::conv_transpose1d": "aten::_convolution",
    "aten::conv_transpose2d": "aten::_convolution",
    "aten::conv_transpose3d": "aten::_convolution",
    "aten::convolution": "aten::_convolution",
    "aten::_native_batch_norm_legit_no_training": "aten::batch_norm",
    "aten::native_batch_norm": "aten::batch_norm",
}
# Runtime checks that torch.export inserts (e.g. after ``.to(dtype)``). They
# consume a tensor but compute nothing, so they must not count as consumers.
_EXPORT_CHECK_KINDS = frozenset(
    {
        "aten::_assert_tensor_metadata",
        "aten::_assert_scalar",
        "aten::_assert_async",
        "aten::sym_constrain_range_for_size",
    }
)


class GraphNode:
    """One operator of a traced graph, as the absorb walk sees it.

    Attributes
    ----------
    kind : str
        Operator name, TorchScript style (``"aten::linear"``), for both
        backends; a fused GPT-2 ``Conv1D`` is ``"nbwoq::conv1d"``.
    module_name : str
        Dotted name of the innermost module whose ``forward`` ran the
        operator; ``""`` for the top-level model.
    inputs : list of GraphNode or None
        The producer of each positional input (None for a constant argument).
        The first entry is the data input for every kind the walk follows.
    users : list of GraphNode
        The operators that consume the node's first output.
    origin : object
        The backend's own node (``torch._C.Node`` or ``torch.fx.Node``).
    """

    __slots__ = ("kind", "module_name", "inputs", "users", "origin")

    def __init__(self, kind, module_name, origin):
        self.kind = kind
        self.module_name = module_name
        self.inputs = []
        self.users = []
        self.origin = origin

    def __repr__(self):
        return f"GraphNode({self.kind!r}, module_name={self.module_name!r})"


class _Graph:
    """The graph view of one trace: nodes in execution order."""

    def __init__(self, nodes, backend):
        self.nodes = nodes
        self.backend = backend


def _scope_to_module_name(scope):
    # "__module.model/__module.model.layers.0/__module.model.layers.0.mlp"
    # -> "model.layers.0.mlp": the last segment, minus the "__module" root.
    return ".".join(scope.split("/")[-1].split(".")[1:])


def _graph_from_torchscript(script_module):
    graph = script_module.graph
    # Values are identified by their debug names: pybind may hand out a new
    # Python wrapper for the same C++ node, so object identity is unreliable.
    producer = {}
    param = GraphNode("prim::Param", "", graph.param_node())
    for index, value in enumerate(graph.inputs()):
        producer[value.debugName()] = (param, index)
    nodes = [param]
    for ts_node in graph.nodes():
        node = GraphNode(ts_node.kind(), _scope_to_module_name(ts_node.scopeName()), ts_node)
        for value in ts_node.inputs():
            source = producer.get(value.debugName())
            if source is None:
                node.inputs.append(None)
                continue
            source_node, output_index = source
            node.inputs.append(source_node)
            # Like the reference, only uses of the first output count.
            if output_index == 0:
                source_node.users.append(node)
        for index, value in enumerate(ts_node.outputs()):
            producer[value.debugName()] = (node, index)
        nodes.append(node)
    return _Graph(nodes, "torchscript")


def _export_module_name(fx_node):
    stack = fx_node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # Non-strict export writes "model.layers.0"; strict export has written
    # "L['self'].model.layers[0]" in some torch versions. Accept both.
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", path)
    # The first part is the attribute of _TensorOutputs that holds the model.
    return path.partition(".")[2]


def _export_kind(fx_node):
    if fx_node.op == "placeholder":
        return "prim::Param"
    if fx_node.op == "get_attr":
        return "prim::GetAttr"
    if fx_node.op == "output":
        return "prim::Return"
    schema = getattr(fx_node.target, "_schema", None)
    if schema is not None:
        kind = schema.name
        return _EXPORT_KIND_ALIASES.get(kind, kind)
    return f"python::{getattr(fx_node.target, '__name__', str(fx_node.target))}"


def _export_alias_source(fx_node, kind):
    """The node an identity-like op merely forwards, else None.

    Eval-mode dropout is kept by torch.export but removed by TorchScript
    freezing; ``getitem(batch_norm, 0)`` is how export unpacks a multi-output
    norm. Treating both as the node they forward keeps the backends alike.
    """
    import operator

    args = fx_node.args
    if kind == "aten::dropout" and len(args) >= 3 and args[2] is False:
        return args[0]
    if fx_node.op == "call_function" and fx_node.target is operator.getitem and args[1] == 0:
        source = args[0]
        if isinstance(source, torch.fx.Node) and _export_kind(source) == "aten::batch_norm":
            return source
    return None


def _graph_from_export(exported):
    fx_nodes = list(exported.graph.nodes)
    kinds = {fx_node: _export_kind(fx_node) for fx_node in fx_nodes}
    alias = {}
    for fx_node in fx_nodes:
        source = _export_alias_source(fx_node, kinds[fx_node])
        if isinstance(source, torch.fx.Node):
            alias[fx_node] = alias.get(source, source)

    mapped = {}
    nodes = []
    for fx_node in fx_nodes:
        if fx_node in alias or kinds[fx_node] in _EXPORT_CHECK_KINDS:
            continue
        node = GraphNode(kinds[fx_node], _export_module_name(fx_node), fx_node)
        mapped[fx_node] = node
        nodes.append(node)

    def resolve(fx_node):
        return mapped.get(alias.get(fx_node, fx_node))

    for fx_node, node in mapped.items():
        node.inputs = [resolve(arg) if isinstance(arg, torch.fx.Node) else None for arg in fx_node.args]
        pending = list(fx_node.users)
        while pending:
            user = pending.pop(0)
            if user in alias:
                pending[:0] = list(user.users)
            elif user in mapped and kinds[user] not in _EXPORT_CHECK_KINDS:
                node.users.append(mapped[user])
    return _Graph(nodes, "export")


def _fuse_conv1d(graph, conv1d_names):
    """Fuse each ``view -> addmm -> view`` of a GPT-2 ``Conv1D`` into one node.

    After fusion the node's first input is the tensor fed to the ``Conv1D``
    and its users are those of the ``Conv1D``'s output, exactly as for an
    ``aten::linear`` node, so the reference's walk applies. The views are only
    looked through when they belong to the same ``Conv1D`` (same module
    name): they flatten and restore the leading dimensions and keep the
    channel dimension, so a per-channel scale passes through them.
    """
    removed = set()
    for node in graph.nodes:
        if node.kind != "aten::addmm" or node.module_name not in conv1d_names or len(node.inputs) < 3:
            continue
        bias, data, weight = node.inputs[:3]
        if data is not None and data.kind in _RESHAPE_KINDS and data.module_name == node.module_name:
            flatten, data = data, data.inputs[0]
            removed.add(id(flatten))
            if data is not None:
                data.users = [node if user is flatten else user for user in data.users]
        node.inputs = [data, weight, bias]
        real_users = [user for user in node.users if user.kind != "aten::size"]
        if (
            len(real_users) == 1
            and real_users[0].kind in _RESHAPE_KINDS
            and real_users[0].module_name == node.module_name
        ):
            unflatten = real_users[0]
            removed.add(id(unflatten))
            node.users = list(unflatten.users)
            for user in unflatten.users:
                user.inputs = [node if source is unflatten else source for source in user.inputs]
        node.kind = _CONV1D_KIND
    graph.nodes = [node for node in graph.nodes if id(node) not in removed]


class _TensorOutputs(torch.nn.Module):
    """Wrap a model so that its output is a flat tuple of tensors.

    torch.export only accepts outputs it can flatten; ``transformers`` outputs
    may hold a ``DynamicCache``. The model sits under the attribute ``model``,
    whose name :func:`_export_module_name` strips again.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        from torch.utils._pytree import tree_leaves

        output = self.model(*args, **kwargs)
        return tuple(leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor))
