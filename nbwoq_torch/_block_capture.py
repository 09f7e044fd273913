"""Recording the first transformer block's arguments and stopping the model there.

:func:`replace_forward` / :func:`recover_forward` (and the context manager
:func:`capture_block_inputs`) record the arguments of the first block and stop
the model there, as AWQ needs. Unlike the reference, the stop uses a private
exception, so a genuine ``ValueError`` from the model propagates (SPEC deviation 6).
"""

from __future__ import annotations

import contextlib
import functools

from nbwoq_torch._modules import fetch_module, get_block_prefix

__all__ = ["replace_forward", "recover_forward", "capture_block_inputs", "BlockInputs"]


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
