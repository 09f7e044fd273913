"""Running calibration batches through a model, and picking one.

:func:`model_forward`, :func:`forward_wrapper`, :func:`move_input_to_device` and
:func:`get_example_input`. A batch is only treated as a bare input because of its
structure, never because the model raised on it (SPEC deviation 6).
"""

from __future__ import annotations

import inspect
from collections import UserDict

import torch

__all__ = ["move_input_to_device", "forward_wrapper", "model_forward", "get_example_input"]


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
        # A plain callable (a wrapper, a test's mock) has no ``forward``: inspect it instead.
        signature = inspect.signature(getattr(model, "forward", model))
    except (TypeError, ValueError):  # no introspectable signature: just try
        return True
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True


def forward_wrapper(model, input, device=torch.device("cpu"), move_model=False):  # noqa: A002 (reference name)
    """Run ``model`` on one calibration input.

    Parameters
    ----------
    model : callable
        The model, usually a ``torch.nn.Module``; any callable works (it is left where
        it is unless ``move_model``).
    input : object
        A dict (or ``UserDict``) is passed as keyword arguments, a list or
        tuple as positional arguments, anything else as the only argument. A
        list or tuple that ``model.forward``'s signature cannot take
        positionally is passed whole, as one argument (the reference tried
        that after *any* error, hiding the model's own errors).
    device : torch.device or str or None, optional
        Where the input's tensors are moved; ``None`` leaves them where they are.
    move_model : bool, optional
        New: also move the model with ``model.to(device)`` first. Off by default: the
        model stays where the caller put it (the reference calls ``model.to(device)`` and
        swallows any failure of it, which also skips moving the input; see the migration
        guide).

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
    if move_model is not False and move_model is not True:
        raise TypeError(f"move_model must be True or False, got {move_model!r}")
    if device is not None:
        if move_model:
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


def model_forward(model, dataloader, iters, device, move_model=False):
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
    move_model : bool, optional
        New, off by default: move the model to ``device`` first (see
        :func:`forward_wrapper`).

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
        forward_wrapper(model, _batch_input(batch), device, move_model=move_model)
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
