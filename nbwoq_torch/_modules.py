"""Dotted-name module lookup: the one home for ``model.layers.0.mlp``-style paths.

The reference walks a dotted name and silently stops at the last part that
exists, so a typo ("layers.5" in a 2-layer model, "mpl" for "mlp") edits or
returns the wrong module. Every lookup here goes through :func:`_walk`, which
raises ``AttributeError`` naming the first part that does not exist
(SPEC deviation 5).
"""

from __future__ import annotations

import torch

__all__ = ["set_module", "get_module", "fetch_module", "get_block_prefix"]

# Attribute names under which PEFT / SmoothQuant-style wrappers keep the real
# layer. ``get_module`` and ``set_module`` step into them when the wrapper
# itself does not have the requested part, as the reference does.
_WRAPPER_ATTRS = ("sq_linear", "orig_layer")


def _split_key(key, arg_name):
    """Validate a dotted name and split it into parts.

    The empty string names the model itself (it is what ``named_modules``
    calls the root), so it yields no parts.
    """
    if not isinstance(key, str):
        raise TypeError(f"{arg_name} must be a str, got {type(key).__name__}")
    if key == "":
        return []
    parts = key.split(".")
    if any(part == "" for part in parts):
        raise ValueError(f"{arg_name} has an empty part: {key!r}")
    return parts


def _walk(model, parts, key, through_wrappers):
    """Follow ``parts`` from ``model``; raise on the first part that is missing.

    Numeric parts need no special case: ``ModuleList`` registers its children
    under the names ``"0"``, ``"1"``, ... so ``getattr`` finds them and an index
    past the end is simply a missing attribute.
    """
    obj = model
    for depth, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if through_wrappers:
            inner = _unwrap_for(obj, part)
            if inner is not None:
                obj = getattr(inner, part)
                continue
        found = ".".join(parts[:depth])
        where = f"{type(obj).__name__} at {found!r}" if found else f"the model ({type(obj).__name__})"
        raise AttributeError(f"{key!r}: {where} has no attribute {part!r}")
    return obj


def _unwrap_for(obj, part):
    """The wrapped layer of a PEFT-style wrapper that has ``part``, else None."""
    for attr in _WRAPPER_ATTRS:
        inner = getattr(obj, attr, None)
        if inner is not None and hasattr(inner, part):
            return inner
    return None


def get_module(model, key):
    """Return the submodule (or attribute) of ``model`` at the dotted name ``key``.

    Parameters
    ----------
    model : torch.nn.Module
        The model to search.
    key : str
        Dotted name such as ``"model.layers.0.mlp"``; numeric parts index a
        ``ModuleList``. ``""`` names ``model`` itself. A part missing on a
        PEFT-style wrapper is looked up on the layer it wraps (attribute
        ``sq_linear`` or ``orig_layer``).

    Returns
    -------
    object
        The object at ``key``: usually a module, but a parameter or plain
        attribute is returned too (``"norm.weight"``).

    Raises
    ------
    TypeError
        If ``key`` is not a string.
    ValueError
        If ``key`` has an empty part (``"layers..0"``).
    AttributeError
        If a part does not exist; the message names it. (The reference
        silently returns the last module that exists.)

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> get_module(model, "0")
    Linear(in_features=2, out_features=2, bias=True)
    >>> get_module(model, "0.weight").shape
    torch.Size([2, 2])
    >>> get_module(model, "2")
    Traceback (most recent call last):
    ...
    AttributeError: '2': the model (Sequential) has no attribute '2'
    """
    return _walk(model, _split_key(key, "key"), key, through_wrappers=True)


def fetch_module(model, op_name):
    """Return the submodule of ``model`` named ``op_name``.

    Like :func:`get_module` but, as in the reference, without stepping into
    PEFT-style wrappers: the name must match the model's own hierarchy.

    Parameters
    ----------
    model : torch.nn.Module
        The model to search.
    op_name : str
        Dotted name; ``""`` names ``model`` itself.

    Returns
    -------
    object
        The module (or attribute) at ``op_name``.

    Raises
    ------
    TypeError
        If ``op_name`` is not a string.
    ValueError
        If ``op_name`` has an empty part.
    AttributeError
        If a part does not exist; the message names it.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> fetch_module(model, "0.bias").shape
    torch.Size([2])
    """
    return _walk(model, _split_key(op_name, "op_name"), op_name, through_wrappers=False)


def set_module(model, key, new_module):
    """Put ``new_module`` into ``model`` at the dotted name ``key``.

    Every part but the last must exist; the last part is set (replaced or
    added) on its parent, so ``set_module(model, "layers.0.new_sub", m)`` adds a
    new child. When the parent is a PEFT-style wrapper (it has ``sq_linear`` or
    ``orig_layer``), the new module goes into the wrapped layer, unless ``key``
    names the wrapper attribute itself.

    Parameters
    ----------
    model : torch.nn.Module
        The model to edit, in place.
    key : str
        Dotted name of the module to set.
    new_module : object
        Usually a ``torch.nn.Module``; set with ``setattr``, so modules are
        registered as children.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        If ``key`` is not a string.
    ValueError
        If ``key`` is empty (the model cannot replace itself) or has an empty
        part.
    AttributeError
        If a parent part does not exist; the message names it. (The reference
        skips missing parts, so ``"nonexistent.fc1"`` sets ``model.fc1``.)

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> set_module(model, "0", torch.nn.Identity())
    >>> model[0]
    Identity()
    """
    parts = _split_key(key, "key")
    if not parts:
        raise ValueError("key must name a submodule, got '' (the model itself)")
    parent = _walk(model, parts[:-1], key, through_wrappers=True)
    last = parts[-1]
    for attr in _WRAPPER_ATTRS:
        if last != attr and hasattr(parent, attr):
            parent = getattr(parent, attr)
    # Only a module can hold a submodule; anything else reached by the walk ("__class__"
    # is torch.nn.Module itself) would be monkeypatched for the whole process.
    if not isinstance(parent, torch.nn.Module):
        raise TypeError(f"key {key!r}: {'.'.join(parts[:-1])!r} is a {type(parent).__name__}, not a module")
    setattr(parent, last, new_module)


def get_block_prefix(model):
    """Name and length of the first ``torch.nn.ModuleList`` in ``model``.

    In transformer models this is the list of decoder/encoder blocks
    (``"model.layers"``, ``"transformer.h"``, ``"encoder.layer"``).

    Parameters
    ----------
    model : torch.nn.Module
        The model to search, in ``named_modules()`` order.

    Returns
    -------
    block_prefix : str
        Dotted name of the first ``ModuleList``.
    block_num : int
        Its number of blocks.

    Raises
    ------
    ValueError
        If ``model`` has no ``ModuleList``, or the first one is empty. (The
        reference fails with ``UnboundLocalError`` or an assert.)

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Module()
    >>> model.decoder = torch.nn.Module()
    >>> model.decoder.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 3)
    >>> get_block_prefix(model)
    ('decoder.layers', 3)
    """
    for name, module in model.named_modules():
        # Exact type, as in the reference: a ModuleList subclass is a
        # different container and is not taken for the block list.
        if type(module) is torch.nn.ModuleList:
            if len(module) == 0:
                raise ValueError(f"the first ModuleList of the model, {name!r}, is empty")
            return name, len(module)
    raise ValueError(f"{type(model).__name__} has no torch.nn.ModuleList to take the blocks from")
