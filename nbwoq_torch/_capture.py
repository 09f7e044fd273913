"""Running calibration batches and capturing what flows through a model.

- :func:`replace_forward` / :func:`recover_forward` (and the context manager
  :func:`capture_block_inputs`) record the arguments of the first transformer
  block and stop the model there, as AWQ needs.
- :func:`get_module_input_output` (and :func:`capture_module_io`) record the
  first input and the output of named modules with forward hooks.
- :func:`model_forward`, :func:`forward_wrapper`, :func:`move_input_to_device`
  and :func:`get_example_input` run or pick calibration batches.

Unlike the reference, nothing here hides an error (SPEC deviation 6): the
first-block stop uses a private exception, so a genuine ``ValueError`` from the
model propagates; hooks are removed even when calibration raises; a batch is
only treated as a bare input because of its structure, never because the model
raised on it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import UserDict
from collections.abc import Mapping

import torch

from nbwoq_torch._modules import fetch_module, get_block_prefix

__all__ = [
    "move_input_to_device",
    "forward_wrapper",
    "model_forward",
    "get_example_input",
    "replace_forward",
    "recover_forward",
    "get_module_input_output",
    "capture_block_inputs",
    "capture_module_io",
    "BlockInputs",
]

_HOOK_KINDS = ("input", "output")


# -- batches -----------------------------------------------------------------------


def move_input_to_device(input, device=torch.device("cpu")):  # noqa: A002 (reference name)
    """Move every tensor nested in ``input`` to ``device``.

    Parameters
    ----------
    input : object
        A tensor, or dicts, lists and tuples nesting tensors; anything else is
        returned as it is.
    device : torch.device or str, optional
        Target device.

    Returns
    -------
    object
        Same structure: a dict (also for a ``UserDict`` such as a tokenizer's
        ``BatchEncoding``, as in the reference), a list, a tuple (a named
        tuple keeps its type), or the moved tensor (the same object when it
        is already on ``device``).

    Examples
    --------
    >>> import torch
    >>> batch = {"ids": torch.zeros(2), "extra": (torch.ones(1), "text")}
    >>> moved = move_input_to_device(batch, "cpu")
    >>> moved["extra"][1], moved["ids"] is batch["ids"]
    ('text', True)
    """
    if isinstance(input, (dict, UserDict)):
        return {key: move_input_to_device(value, device) for key, value in input.items()}
    if isinstance(input, tuple):
        items = [move_input_to_device(value, device) for value in input]
        return type(input)(*items) if hasattr(input, "_fields") else tuple(items)
    if isinstance(input, list):
        return [move_input_to_device(value, device) for value in input]
    if isinstance(input, torch.Tensor):
        return input.to(device)
    return input


def _binds_positionally(model, args):
    """Whether ``model.forward`` accepts ``args`` as positional arguments."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # no introspectable signature: just try
        return True
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True


def forward_wrapper(model, input, device=torch.device("cpu")):  # noqa: A002 (reference name)
    """Run ``model`` on one calibration input.

    Parameters
    ----------
    model : torch.nn.Module
        The model; moved to ``device`` first.
    input : object
        A dict (or ``UserDict``) is passed as keyword arguments, a list or
        tuple as positional arguments, anything else as the only argument. A
        list or tuple that ``model.forward``'s signature cannot take
        positionally is passed whole, as one argument (the reference tried
        that after *any* error, hiding the model's own errors).
    device : torch.device or str or None, optional
        Where to run; ``None`` leaves model and input where they are.

    Returns
    -------
    object
        The model's output.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> forward_wrapper(model, (torch.ones(4, 3),)).shape
    torch.Size([4, 2])
    """
    if device is not None:
        model.to(device)
        input = move_input_to_device(input, device)  # noqa: A001
    if isinstance(input, (dict, UserDict)):
        return model(**input)
    if isinstance(input, (list, tuple)) and _binds_positionally(model, input):
        return model(*input)
    return model(input)


def _batch_input(batch):
    """The input part of a calibration batch.

    A tuple or list of exactly two items is an ``(input, label)`` pair; any
    other batch (a tensor, a dict, a longer tuple) is a bare input. A tensor
    is never split along its first axis, even when that axis has length 2
    (the reference unpacks it, so a batch of two samples becomes one sample
    and its "label").
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


def _check_iters(iters):
    if isinstance(iters, bool) or not isinstance(iters, int) or (iters < 1 and iters != -1):
        raise ValueError(f"iters must be -1 (all batches) or a positive integer, got {iters!r}")


def model_forward(model, dataloader, iters, device):
    """Run calibration batches through ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    dataloader : iterable
        Batches: ``(input, label)`` pairs (a tuple or list of two items) or
        bare inputs, decided per batch (see :func:`forward_wrapper` for how an
        input is passed).
    iters : int
        Number of batches to run; ``-1`` runs them all.
    device : torch.device or str or None
        Passed to :func:`forward_wrapper`.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If ``iters`` is 0 or below -1. Errors raised by the model propagate.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> batches = [(torch.ones(4, 3), torch.zeros(4))] * 5
    >>> model_forward(model, batches, iters=2, device="cpu")
    """
    _check_iters(iters)
    count = 0
    for batch in dataloader:
        forward_wrapper(model, _batch_input(batch), device)
        count += 1
        if iters != -1 and count >= iters:
            break


def get_example_input(dataloader, i=1):
    """The input part of the ``i``-th (0-based) batch of ``dataloader``.

    Parameters
    ----------
    dataloader : iterable
        Batches: ``(input, label)`` pairs or bare inputs, as in
        :func:`model_forward`.
    i : int, optional
        Index of the batch. Past the end, the last batch's input is returned,
        as in the reference.

    Returns
    -------
    object or None
        The input, or None when ``dataloader`` is empty.

    Raises
    ------
    ValueError
        If ``i`` is negative.

    Examples
    --------
    >>> import torch
    >>> pairs = [(torch.tensor([k]), torch.tensor(-k)) for k in range(3)]
    >>> get_example_input(pairs)
    tensor([1])
    """
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise ValueError(f"i must be a non-negative integer, got {i!r}")
    example = None
    for index, batch in enumerate(dataloader):
        example = _batch_input(batch)
        if index == i:
            break
    return example


def _model_device(model):
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# -- first-block capture ---------------------------------------------------------------


class _BlockInputsCaptured(BaseException):
    """Raised by the replaced first block to stop the model's forward.

    A ``BaseException`` (like ``GeneratorExit``): model code that catches
    ``Exception`` around its blocks must not swallow the stop and run on.
    """


_ABSENT = object()
_STATE_ATTR = "_nbwoq_forward_state"


class _ForwardState:
    """What replace_forward changed, so recover_forward can undo exactly that."""

    def __init__(self, first_block, model_forward_attr, block_forward_attr):
        self.first_block = first_block
        # The instance attributes ``forward`` had before (``_ABSENT`` when the
        # class method was in use): hooks such as accelerate's set one.
        self.model_forward_attr = model_forward_attr
        self.block_forward_attr = block_forward_attr


def replace_forward(model):
    """Make ``model`` record its first block's arguments and stop there.

    The first block of the block list (see
    :func:`~nbwoq_torch._modules.get_block_prefix`) is replaced by a function
    that appends ``list(args)`` to ``model.total_block_args`` and ``kwargs``
    to ``model.total_block_kwargs``, then stops the forward pass with a
    private exception. ``model.forward`` is wrapped to end quietly at that
    stop and return None. The originals are kept as ``forward_orig`` on the
    model and on the block until :func:`recover_forward`.

    Parameters
    ----------
    model : torch.nn.Module
        A model with a block list; changed in place.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    ValueError
        If the model has no ``ModuleList`` of blocks.
    RuntimeError
        If ``replace_forward`` is already in effect on ``model``.

    Notes
    -----
    Any other exception from the model, ``ValueError`` included, propagates
    (the reference stopped with a ``ValueError`` and so swallowed the model's
    own ones).

    Examples
    --------
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    ...     def forward(self, x):
    ...         for layer in self.layers:
    ...             x = layer(x * 2)
    ...         return x
    >>> net = replace_forward(Net())
    >>> net(torch.ones(1, 2)) is None
    True
    >>> net.total_block_args
    [[tensor([[2., 2.]])]]
    >>> recover_forward(net).forward_orig
    Traceback (most recent call last):
    ...
    AttributeError: 'Net' object has no attribute 'forward_orig'
    """
    if _STATE_ATTR in model.__dict__:
        raise RuntimeError("replace_forward is already in effect on this model; call recover_forward first")
    block_prefix, _ = get_block_prefix(model)
    first_block = fetch_module(model, block_prefix)[0]
    state = _ForwardState(
        first_block,
        model.__dict__.get("forward", _ABSENT),
        first_block.__dict__.get("forward", _ABSENT),
    )

    model.total_block_args = []
    model.total_block_kwargs = []

    def record_and_stop(*args, **kwargs):
        # Looked up at call time: callers may swap in fresh lists.
        model.total_block_args.append(list(args))
        model.total_block_kwargs.append(kwargs)
        raise _BlockInputsCaptured

    first_block.forward_orig = first_block.forward
    first_block.forward = record_and_stop

    original_forward = model.forward

    # wraps keeps the signature visible, which forward_wrapper relies on.
    @functools.wraps(original_forward)
    def forward_until_first_block(*args, **kwargs):
        try:
            return original_forward(*args, **kwargs)
        except _BlockInputsCaptured:
            return None

    model.forward_orig = original_forward
    model.forward = forward_until_first_block
    model.__dict__[_STATE_ATTR] = state
    return model


def _restore_attr(module, name, value):
    if value is _ABSENT:
        module.__dict__.pop(name, None)
    else:
        module.__dict__[name] = value


def recover_forward(model):
    """Undo :func:`replace_forward`.

    Both ``forward`` methods are restored exactly as they were (an instance
    attribute set by, e.g., accelerate is put back; otherwise the class method
    is used again), and the ``forward_orig`` attributes are removed. The
    captured ``model.total_block_args`` and ``model.total_block_kwargs`` stay.

    Parameters
    ----------
    model : torch.nn.Module
        A model prepared by :func:`replace_forward`.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    RuntimeError
        If :func:`replace_forward` is not in effect on ``model``.
    """
    state = model.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        raise RuntimeError("recover_forward: replace_forward is not in effect on this model")
    _restore_attr(model, "forward", state.model_forward_attr)
    _restore_attr(state.first_block, "forward", state.block_forward_attr)
    model.__dict__.pop("forward_orig", None)
    state.first_block.__dict__.pop("forward_orig", None)
    return model


class BlockInputs:
    """What :func:`capture_block_inputs` recorded: one entry per model call.

    Attributes
    ----------
    args : list of list
        The positional arguments the first block received, per call.
    kwargs : list of dict
        The keyword arguments the first block received, per call.
    """

    def __init__(self):
        self.args = []
        self.kwargs = []

    def __len__(self):
        return len(self.args)

    def __iter__(self):
        """Yield ``(args, kwargs)`` per call, ready for ``block(*args, **kwargs)``."""
        return iter(zip(self.args, self.kwargs))


@contextlib.contextmanager
def capture_block_inputs(model):
    """Context manager: record the first block's arguments while it is open.

    Inside the ``with`` block, calling ``model`` records the first block's
    arguments and stops there (see :func:`replace_forward`). On exit the model
    is restored completely, even when its forward raised: ``forward``,
    ``forward_orig``, ``total_block_args`` and ``total_block_kwargs`` are as
    they were before.

    Parameters
    ----------
    model : torch.nn.Module
        A model with a block list.

    Yields
    ------
    BlockInputs
        The recorded arguments.

    Raises
    ------
    ValueError
        If the model has no ``ModuleList`` of blocks.
    RuntimeError
        If :func:`replace_forward` is already in effect on ``model``.

    Examples
    --------
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    ...     def forward(self, x):
    ...         return self.layers[0](x + 1)
    >>> net = Net()
    >>> with capture_block_inputs(net) as captured:
    ...     net(torch.zeros(1, 2))
    >>> [(args, kwargs) for args, kwargs in captured]
    [([tensor([[1., 1.]])], {})]
    >>> hasattr(net, "total_block_args")
    False
    """
    before = {name: model.__dict__.get(name, _ABSENT) for name in ("total_block_args", "total_block_kwargs")}
    captured = BlockInputs()
    replace_forward(model)
    model.total_block_args = captured.args
    model.total_block_kwargs = captured.kwargs
    try:
        yield captured
    finally:
        recover_forward(model)
        for name, value in before.items():
            _restore_attr(model, name, value)


# -- module input/output capture ------------------------------------------------------------


def _check_hook_config(model, module_hook_config):
    """Resolve ``{name: kinds}`` to ``[(name, module, kinds)]``, strictly."""
    if not isinstance(module_hook_config, Mapping):
        raise TypeError(f"module_hook_config must be a dict, got {type(module_hook_config).__name__}")
    resolved = []
    for name, kinds in module_hook_config.items():
        if isinstance(kinds, str):
            kinds = [kinds]
        kinds = list(kinds)
        unknown = [kind for kind in kinds if kind not in _HOOK_KINDS]
        if unknown:
            raise ValueError(f"module_hook_config[{name!r}] may hold 'input' and 'output', got {unknown!r}")
        module = fetch_module(model, name)  # AttributeError names a missing part
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module_hook_config key {name!r} names a {type(module).__name__}, not a module")
        resolved.append((name, module, [kind for kind in _HOOK_KINDS if kind in kinds]))
    return resolved


@contextlib.contextmanager
def capture_module_io(model, module_hook_config, input_func=None, output_func=None):
    """Context manager: record named modules' first input and output.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    module_hook_config : dict of str to list of str
        ``{module name: ["input"] | ["output"] | ["input", "output"]}``.
    input_func, output_func : callable, optional
        Applied to each recorded input / output before it is stored (to keep
        less memory, e.g. ``lambda t: t.abs().amax(0)``).

    Yields
    ------
    dict
        ``{name: {"input": [...], "output": [...]}}`` with the requested
        kinds, in ``module_hook_config`` order, filled as the model runs.
        Per call, "input" is the first positional argument (or, for a call
        with keyword arguments only, the first keyword argument) and "output"
        is the output, or its first element when it is a tuple.

    Raises
    ------
    TypeError
        If ``module_hook_config`` is not a dict or names a non-module.
    ValueError
        If a kind is not "input" or "output".
    AttributeError
        If a module name does not exist (the reference ignored it).

    Notes
    -----
    The hooks are removed on exit, also when the block raises.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> with capture_module_io(model, {"0": ["output"]}) as record:
    ...     _ = model(torch.ones(2, 3))
    >>> record["0"]["output"][0].shape
    torch.Size([2, 4])
    """
    resolved = _check_hook_config(model, module_hook_config)
    record = {name: {kind: [] for kind in kinds} for name, _, kinds in resolved}

    def make_hook(name, kinds):
        def hook(module, args, kwargs, output):
            if "input" in kinds:
                if args:
                    value = args[0]
                else:
                    value = next(iter(kwargs.values()), None)
                record[name]["input"].append(value if input_func is None else input_func(value))
            if "output" in kinds:
                value = output[0] if isinstance(output, tuple) else output
                record[name]["output"].append(value if output_func is None else output_func(value))

        return hook

    handles = []
    try:
        for name, module, kinds in resolved:
            handles.append(module.register_forward_hook(make_hook(name, kinds), with_kwargs=True))
        yield record
    finally:
        for handle in handles:
            handle.remove()


def get_module_input_output(
    model,
    module_hook_config={},  # noqa: B006 (reference signature; never mutated)
    dataloader=None,
    iters=-1,
    calib_func=None,
    input_func=None,
    output_func=None,
):
    """Record named modules' first input and output over a calibration run.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    module_hook_config : dict of str to list of str, optional
        ``{module name: ["input"] | ["output"] | ["input", "output"]}``,
        e.g. ``{"fc1": ["output"], "fc2": ["input", "output"]}``.
    dataloader : iterable, optional
        Calibration batches for :func:`model_forward` (run on the device of
        the model's first parameter).
    iters : int, optional
        Number of batches; ``-1`` runs them all.
    calib_func : callable, optional
        ``calib_func(model)`` runs the calibration instead of ``dataloader``.
    input_func, output_func : callable, optional
        Applied to each recorded input / output before it is stored.

    Returns
    -------
    dict
        ``{name: {"input": [...], "output": [...]}}`` as in
        :func:`capture_module_io`.

    Raises
    ------
    ValueError
        If neither ``dataloader`` nor ``calib_func`` is given, or for a bad
        ``iters`` or kind.
    AttributeError
        If a module name does not exist.

    Notes
    -----
    The hooks are removed even when calibration raises; the error propagates.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> batches = [(torch.ones(5, 3), torch.zeros(5))] * 2
    >>> values = get_module_input_output(model, {"2": ["input"]}, dataloader=batches)
    >>> [t.shape for t in values["2"]["input"]]
    [torch.Size([5, 4]), torch.Size([5, 4])]
    """
    if calib_func is None and dataloader is None:
        raise ValueError("get_module_input_output needs a dataloader or a calib_func")
    if calib_func is None:
        _check_iters(iters)
    with capture_module_io(model, module_hook_config, input_func, output_func) as record:
        if calib_func is not None:
            calib_func(model)
        else:
            model_forward(model, dataloader, iters, device=_model_device(model))
    return record
