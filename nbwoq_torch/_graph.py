"""Which layer can absorb a scale for which: graph tracing and the absorb walk.

AWQ / SmoothQuant multiply a layer's input channels by a scale and divide the
previous layer's output channels by it, so the pair must be directly
connected. :class:`GraphTrace` finds those pairs on a traced graph.

Two tracing backends feed one small graph view (:class:`GraphNode`):

- ``"torchscript"``: ``torch.jit.trace`` + ``torch.jit.freeze``, as the
  reference does; module names come from the nodes' scope names.
- ``"export"``: ``torch.export.export`` (non-strict); module names come from the
  nodes' ``nn_module_stack``. It handles models ``torch.jit.trace`` cannot
  (outputs holding a ``DynamicCache``, for one) and is the way forward, since
  TorchScript is deprecated. ``torch.fx.symbolic_trace`` is not an option: it
  fails on current ``transformers`` models.

The graph view and its two builders are in :mod:`nbwoq_torch._graph_view`.
Both backends name operators the TorchScript way (``"aten::linear"``), so the
reference's rules (:attr:`GraphTrace.skip_ops_to_find_absorb`,
:attr:`GraphTrace.could_absorb_layers`) apply unchanged to either.
"""

from __future__ import annotations

import logging
import warnings
from collections import UserDict

import torch

from nbwoq_torch._graph_view import (
    _CONV1D_KIND,
    GraphNode,
    _fuse_conv1d,
    _Graph,
    _graph_from_export,
    _graph_from_torchscript,
    _TensorOutputs,
)
from nbwoq_torch._modules import get_module

__all__ = ["get_parent", "GraphTrace", "GraphNode", "get_absorb_layers"]

logger = logging.getLogger(__name__)

_BACKENDS = ("torchscript", "export")


def get_parent(node, all_parents=False):
    """The producer of a graph node's first input, or all its inputs.

    Parameters
    ----------
    node : torch._C.Node or GraphNode
        A TorchScript graph node, or a node of :meth:`GraphTrace.get_nodes`.
    all_parents : bool, optional
        Return every input instead of the first input's producer.

    Returns
    -------
    object or list or None
        None when ``node`` has no inputs. Otherwise, for a TorchScript node,
        the ``torch._C.Node`` producing its first input, or with
        ``all_parents`` the list of its input ``torch._C.Value`` objects (as
        in the reference); for a :class:`GraphNode`, the producing
        :class:`GraphNode` (None for a constant argument), or with
        ``all_parents`` the list of producers.

    Raises
    ------
    TypeError
        If ``node`` is neither kind of node.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)).eval()
    >>> traced = torch.jit.freeze(torch.jit.trace(model, torch.randn(1, 4)))
    >>> linear = traced.graph.findNode("aten::linear")
    >>> get_parent(linear).kind()
    'aten::layer_norm'
    """
    if isinstance(node, GraphNode):
        if not node.inputs:
            return None
        return list(node.inputs) if all_parents else node.inputs[0]
    if isinstance(node, torch._C.Node):
        inputs = list(node.inputs())
        if not inputs:
            return None
        return inputs if all_parents else inputs[0].node()
    raise TypeError(f"node must be a torch._C.Node or a GraphNode, got {type(node).__name__}")


class GraphTrace:
    """Trace a model and find, for each layer, the layer that can absorb its scale.

    The tables below are the reference's, plus GPT-2's ``Conv1D``:

    Attributes
    ----------
    supported_torch_module_to_aten : dict of str to str
        Module class name -> operator kind that represents it in the graph.
    skip_ops_to_find_absorb : list of str
        Operators the walk passes through on the way up (they commute with a
        positive per-channel scale, or only change the dtype).
    could_absorb_layers : list of str
        Operator kinds whose output can carry a scale back into their weight.
    """

    def __init__(self):
        self.supported_torch_module_to_aten = {
            "Linear": "aten::linear",
            "Conv2d": "aten::_convolution",
            "ConvTranspose2d": "aten::_convolution",
            "LayerNorm": "aten::layer_norm",
            "BatchNorm2d": "aten::batch_norm",
            "GroupNorm": "aten::group_norm",
            "InstanceNorm2d": "aten::instance_norm",
            "LlamaRMSNorm": "aten::mul",
            "T5LayerNorm": "aten::mul",
            "LPLayerNorm": "aten::layer_norm",
            # transformers' GPT-2 style layer; found by _fuse_conv1d.
            "Conv1D": _CONV1D_KIND,
        }
        self.skip_ops_to_find_absorb = ["aten::to", "aten::relu", "aten::leaky_relu", "aten::hardtanh"]
        self.could_absorb_layers = [
            "aten::layer_norm",
            "aten::batch_norm",
            "aten::linear",
            "aten::_convolution",
            "aten::group_norm",
            "aten::instance_norm",
            "aten::mul",
            # Only present after fusion, i.e. when "Conv1D" was requested.
            _CONV1D_KIND,
        ]

    # -- tracing -----------------------------------------------------------------

    def trace(self, model, dummy_input, backend="torchscript"):
        """Trace ``model`` on ``dummy_input``; None when tracing fails.

        Parameters
        ----------
        model : torch.nn.Module
            The model to trace. It is not modified (the TorchScript backend
            moves a model off an accelerator to the CPU and back, as the
            reference does).
        dummy_input : torch.Tensor, tuple, list or dict
            A dict (or ``UserDict``) is passed as keyword arguments, a tuple
            or list as positional arguments, anything else as the only
            argument. A tuple or list that fails is retried as its first
            element alone, as in the reference.
        backend : {"torchscript", "export"}, optional
            ``"torchscript"`` returns a frozen ``torch.jit.ScriptModule``;
            ``"export"`` a ``torch.export.ExportedProgram``.

        Returns
        -------
        traced : object or None
            None when tracing failed (the reason is logged as a warning).

        Raises
        ------
        ValueError
            If ``backend`` is unknown.
        """
        _check_backend(backend, allow_auto=False)
        if backend == "export":
            return self._trace_export(model, dummy_input)
        return self._trace_torchscript(model, dummy_input)

    def _trace_torchscript(self, model, dummy_input):
        first = next(model.parameters(), None)
        orig_device = first.device if first is not None else torch.device("cpu")
        # TorchScript tracing and freezing are done on the CPU, as in the
        # reference; the model goes back where it was afterwards.
        moved = orig_device.type not in ("cpu", "meta")
        if moved:
            from nbwoq_torch._batches import move_input_to_device

            model = model.to("cpu")
            dummy_input = move_input_to_device(dummy_input, "cpu")
        try:
            with warnings.catch_warnings():
                # Tracer and deprecation warnings say nothing about the result.
                warnings.simplefilter("ignore")
                if isinstance(dummy_input, (dict, UserDict)):
                    attempts = [lambda: torch.jit.trace(
                        model, example_kwarg_inputs=dict(dummy_input), strict=False, check_trace=False
                    )]
                else:
                    attempts = [lambda: torch.jit.trace(model, dummy_input, strict=False)]
                    if isinstance(dummy_input, (tuple, list)) and len(dummy_input) > 0:
                        attempts.append(lambda: torch.jit.trace(model, dummy_input[0], strict=False))
                error = None
                for attempt in attempts:
                    try:
                        traced = attempt()
                        return torch.jit.freeze(traced.eval(), optimize_numerics=False)
                    except Exception as exc:  # any tracer failure means "no graph"
                        error = exc
                logger.warning("torch.jit.trace failed, no TorchScript graph: %s", _summary(error))
                return None
        finally:
            if moved:
                model.to(orig_device)

    def _trace_export(self, model, dummy_input):
        wrapper = _TensorOutputs(model)
        if isinstance(dummy_input, (dict, UserDict)):
            attempts = [((), dict(dummy_input))]
        elif isinstance(dummy_input, (tuple, list)):
            attempts = [(tuple(dummy_input), {})]
            if len(dummy_input) > 0:
                attempts.append(((dummy_input[0],), {}))
        else:
            attempts = [((dummy_input,), {})]
        error = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for args, kwargs in attempts:
                try:
                    return torch.export.export(wrapper, args, kwargs, strict=False)
                except Exception as exc:  # any export failure means "no graph"
                    error = exc
        logger.warning("torch.export.export failed, no exported graph: %s", _summary(error))
        return None

    # -- graph queries -------------------------------------------------------------

    def _graph_of(self, traced_model):
        if isinstance(traced_model, _Graph):
            return traced_model
        if isinstance(traced_model, torch.export.ExportedProgram):
            return _graph_from_export(traced_model)
        if isinstance(traced_model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
            return _graph_from_torchscript(traced_model)
        raise TypeError(
            "traced_model must come from GraphTrace.trace (a ScriptModule or an ExportedProgram), "
            f"got {type(traced_model).__name__}"
        )

    def get_nodes(self, traced_model, op_types=["Linear"]):  # noqa: B006 (reference signature; never mutated)
        """The nodes of the given operator kinds, in graph order.

        Parameters
        ----------
        traced_model : torch.jit.ScriptModule or torch.export.ExportedProgram
            What :meth:`trace` returned.
        op_types : str or list of str, optional
            Operator kinds such as ``"aten::linear"`` (see
            :meth:`mapping_torch_module_to_aten`). The default, ``["Linear"]``,
            is the reference's and matches nothing: pass operator kinds.

        Returns
        -------
        list of (GraphNode, str)
            Each matching node with the kind it matched.
        """
        if isinstance(op_types, str):
            op_types = [op_types]
        wanted = set(op_types)
        return [(node, node.kind) for node in self._graph_of(traced_model).nodes if node.kind in wanted]

    def get_prev_absorb_layer(self, nodes):
        """For each node, the node that can absorb a scale for it, or None.

        Walks up from each node's data input through
        :attr:`skip_ops_to_find_absorb`. The node reached can absorb when its
        kind is in :attr:`could_absorb_layers` and every consumer of its output
        (ignoring ``aten::size``) can take the scale too: an absorbable layer,
        or a skip op whose own consumers pass the same test.

        Parameters
        ----------
        nodes : list of GraphNode
            Nodes from :meth:`get_nodes`.

        Returns
        -------
        list of GraphNode or None
            One entry per node.
        """
        could_absorb = set(self.could_absorb_layers)
        skip = set(self.skip_ops_to_find_absorb)
        result = []
        for node in nodes:
            parent = get_parent(node)
            while parent is not None and parent.kind in skip:
                parent = get_parent(parent)
            if parent is None or parent.kind not in could_absorb:
                result.append(None)
                continue
            consumer_kinds = {user.kind for user in parent.users} - {"aten::size"}
            if consumer_kinds <= could_absorb:
                result.append(parent)
            elif consumer_kinds & skip:
                result.append(parent if self.skip_op_absorb_helper(parent) else None)
            else:
                # The output also feeds something that cannot take the scale
                # (a residual add, a reshape): absorbing would change it.
                result.append(None)
        return result

    def skip_op_absorb_helper(self, parent_node):
        """Whether every consumer of ``parent_node`` can take a scale.

        A consumer can when it is ``aten::size``, an absorbable layer, or a
        skip op whose own consumers all can.

        Parameters
        ----------
        parent_node : GraphNode
            The candidate absorbing node.

        Returns
        -------
        bool
        """
        could_absorb = set(self.could_absorb_layers)
        skip = set(self.skip_ops_to_find_absorb)
        for user in parent_node.users:
            if user.kind == "aten::size" or user.kind in could_absorb:
                continue
            if user.kind in skip and self.skip_op_absorb_helper(user):
                continue
            return False
        return True

    def mapping_torch_module_to_aten(self, op_types):
        """Operator kinds for module class names, without duplicates.

        Parameters
        ----------
        op_types : list of str
            Module class names (``"Linear"``, ``"LayerNorm"``, ``"Conv1D"``...).
            A name not in :attr:`supported_torch_module_to_aten` is skipped
            with a warning, as in the reference.

        Returns
        -------
        list of str
            Operator kinds, in the order first requested.
        """
        kinds = []
        for op_type in op_types:
            kind = self.supported_torch_module_to_aten.get(op_type)
            if kind is None:
                logger.warning("%s is not a supported layer type, ignoring it", op_type)
            elif kind not in kinds:
                kinds.append(kind)
        return kinds

    def get_absorb_to_layer(self, model, example_input, op_types, skip_unsupported_layers=True, backend="torchscript"):
        """Trace ``model`` and map each absorbing layer to the layers it absorbs for.

        Parameters
        ----------
        model : torch.nn.Module
            The model.
        example_input : object
            Passed to :meth:`trace`.
        op_types : list of str
            Module class names of the layers to find absorbers for.
        skip_unsupported_layers : bool, optional
            Drop pairs whose modules cannot take a scale (see
            :meth:`remove_unsupported_layers`).
        backend : {"torchscript", "export", "auto"}, optional
            How to trace. ``"auto"`` traces with TorchScript and, when that
            fails, with ``torch.export``.

        Returns
        -------
        absorb_to_layer : dict of str to list of str or None
            ``{absorbing layer: [layers]}`` in graph order; None when tracing
            failed.
        no_absorb_layers : list of str or None
            Layers of the requested types without an absorbing layer; None
            when tracing failed.

        Raises
        ------
        ValueError
            If ``backend`` is unknown.
        """
        op_types = _check_layer_types(op_types)
        _check_backend(backend, allow_auto=True)
        if backend == "auto":
            for name in _BACKENDS:
                found = self.get_absorb_to_layer(model, example_input, op_types, skip_unsupported_layers, name)
                if found[1] is not None:
                    return found
            return None, None
        traced = self.trace(model, example_input, backend=backend)
        if traced is None:
            return None, None
        return self._absorb_on_graph(model, self._graph_of(traced), op_types, skip_unsupported_layers)

    def _absorb_on_graph(self, model, graph, op_types, skip_unsupported_layers=True):
        """:meth:`get_absorb_to_layer` on a graph already traced (``_Graph``), so that a
        caller that also walks the graph itself (``absorb_plan``) traces once."""
        if "Conv1D" in op_types:
            _fuse_conv1d(graph, _conv1d_names(model))
        nodes = [node for node, _ in self.get_nodes(graph, self.mapping_torch_module_to_aten(op_types))]
        absorb_to_layer = {}
        no_absorb_layers = []
        for node, absorb in zip(nodes, self.get_prev_absorb_layer(nodes)):
            layer_name = node.module_name
            # A functional call in the model's own forward is no layer; the
            # reference drops such pairs, and we drop such loners too.
            if layer_name == "":
                continue
            if absorb is None:
                no_absorb_layers.append(layer_name)
            elif absorb.module_name != "":
                absorb_to_layer.setdefault(absorb.module_name, []).append(layer_name)
        if skip_unsupported_layers:
            absorb_to_layer = self.remove_unsupported_layers(model, absorb_to_layer, no_absorb_layers)
        return absorb_to_layer, no_absorb_layers

    def remove_unsupported_layers(self, model, absorb_to_layer, no_absorb_layers):
        """Keep the pairs whose modules can really exchange a scale.

        The absorbing module must be of a type in
        :attr:`supported_torch_module_to_aten`, or a module whose output is
        its 1-D ``weight`` times something that does not depend on the weight
        (checked numerically, so ``Qwen2RMSNorm`` and other copies of
        ``LlamaRMSNorm`` qualify while Gemma's ``x * (1 + weight)`` does not).
        Every absorbed module must be of a supported type, and not a grouped
        convolution other than a depthwise one. The layers of a rejected pair
        are appended to ``no_absorb_layers``.

        Parameters
        ----------
        model : torch.nn.Module
            The traced model.
        absorb_to_layer : dict of str to list of str
            From the graph walk.
        no_absorb_layers : list of str
            Extended in place.

        Returns
        -------
        dict of str to list of str
            The accepted pairs, in the same order.
        """
        supported = self.supported_torch_module_to_aten
        result = {}
        for absorb_name, layer_names in absorb_to_layer.items():
            absorber = _lookup(model, absorb_name)
            ok = absorber is not None and (
                type(absorber).__name__ in supported or _output_scales_with_weight(absorber)
            )
            for layer_name in layer_names if ok else ():
                layer = _lookup(model, layer_name)
                if layer is None or type(layer).__name__ not in supported or not _check_valid_conv(layer):
                    ok = False
                    break
            if ok:
                result[absorb_name] = layer_names
            else:
                no_absorb_layers.extend(layer_names)
        return result


def _summary(error, limit=200):
    # Tracer errors can embed whole tensor reprs; the first line names the
    # failure and the last line usually the cause (e.g. "DynamicCache").
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".strip().splitlines() if line.strip()]
    parts = [lines[0]] if len(lines) == 1 else [lines[0], lines[-1]]
    return " ... ".join(part if len(part) <= limit else part[:limit] + "..." for part in parts)


def _lookup(model, name):
    try:
        return get_module(model, name)
    except AttributeError:
        return None


def _check_valid_conv(module):
    """False for a grouped Conv2d that is not depthwise: a per-input-channel
    scale cannot be folded into its weight the usual way."""
    if not isinstance(module, torch.nn.Conv2d) or module.groups == 1:
        return True
    return module.in_channels == module.out_channels == module.groups


def _output_scales_with_weight(module):
    """Whether ``module(x)`` is its 1-D ``weight`` times a weight-free term.

    That is what lets a per-channel scale be absorbed by dividing the weight.
    Checked by running the module with its weight multiplied by random
    positive factors: the output must be multiplied by the same factors.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1 or not weight.is_floating_point():
        return False
    if weight.device.type == "meta":
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, weight.numel(), generator=generator).to(weight.device, weight.dtype)
    factors = (torch.rand(weight.numel(), generator=generator) + 0.5).to(weight.device, weight.dtype)
    params = dict(module.named_parameters())
    weight_name = next((name for name, param in params.items() if param is weight), None)
    if weight_name is None:  # ``weight`` is not this module's own parameter
        return False
    try:
        with torch.no_grad():
            base = torch.func.functional_call(module, params, (x,))
            scaled = torch.func.functional_call(module, {**params, weight_name: weight * factors}, (x,))
    except Exception:  # a module that cannot run on a plain (2, C) input is not a norm
        return False
    if not isinstance(base, torch.Tensor) or not isinstance(scaled, torch.Tensor) or base.shape != x.shape:
        return False
    return bool(torch.allclose(scaled.float(), (base * factors).float(), rtol=1e-3, atol=1e-5))


def _conv1d_names(model):
    return {name for name, module in model.named_modules() if type(module).__name__ == "Conv1D"}


def _check_backend(backend, allow_auto):
    allowed = ("auto",) + _BACKENDS if allow_auto else _BACKENDS
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {backend!r}")


def _check_layer_types(supported_layers):
    if isinstance(supported_layers, str):
        return [supported_layers]
    if not isinstance(supported_layers, (list, tuple)) or not all(isinstance(t, str) for t in supported_layers):
        raise TypeError(f"supported_layers must be a list of class names, got {supported_layers!r}")
    return list(supported_layers)


def get_absorb_layers(model, example_inputs, supported_layers=["Linear"], folding=False, backend="auto"):  # noqa: B006
    """Which layer can absorb a scale for which, found on a traced graph.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    example_inputs : torch.Tensor, tuple, list or dict
        One batch of inputs (a dict is passed as keyword arguments).
    supported_layers : list of str, optional
        Class names of the layers to find absorbers for (``"Linear"``,
        ``"Conv2d"``, ``"LayerNorm"``, ...). ``"Conv1D"`` selects
        ``transformers``' GPT-2 style layers, which the reference cannot see
        (they trace as ``addmm``). The default list is never modified.
    folding : bool, optional
        Accepted for compatibility; it has no effect (as in the reference).
    backend : {"auto", "torchscript", "export"}, optional
        ``"auto"`` traces with TorchScript, as the reference does, and falls
        back to ``torch.export`` when TorchScript fails.

    Returns
    -------
    absorb_to_layer : dict of str to list of str
        ``{absorbing layer: [layers it absorbs for]}``, in graph order.
    no_absorb_layers : list of str
        Layers of the requested types with no absorbing layer. When no
        backend can trace the model: ``{}`` and the name of every module of
        class ``Linear`` (and ``Conv1D`` when requested).

    Raises
    ------
    TypeError
        If ``supported_layers`` is not a list of strings.
    ValueError
        If ``backend`` is unknown.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)
    ... ).eval()
    >>> get_absorb_layers(model, torch.randn(2, 8))
    ({'2': ['3']}, ['0'])
    """
    _check_backend(backend, allow_auto=True)
    op_types = _check_layer_types(supported_layers)
    absorb_to_layer, no_absorb_layers = GraphTrace().get_absorb_to_layer(model, example_inputs, op_types,
                                                                         backend=backend)
    if no_absorb_layers is not None:
        if not absorb_to_layer:
            logger.warning("No absorb layer is detected.")
        return absorb_to_layer, no_absorb_layers
    # No graph at all: every layer has to be treated as having no absorber.
    fallback_types = {"Linear", "Conv1D"} if "Conv1D" in op_types else {"Linear"}
    return {}, [name for name, module in model.named_modules() if type(module).__name__ in fallback_types]
