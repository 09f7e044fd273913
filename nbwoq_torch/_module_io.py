"""Recording named modules' first input and output with forward hooks.

:func:`get_module_input_output` (and the context manager :func:`capture_module_io`).
Hooks are removed even when calibration raises (SPEC deviation 6).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from nbwoq_torch._batches import _check_iters, _model_device, model_forward
from nbwoq_torch._modules import fetch_module

__all__ = ["get_module_input_output", "capture_module_io"]

_HOOK_KINDS = ("input", "output")


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
