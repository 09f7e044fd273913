"""Running the reference's own algorithms on nbwoq: :func:`patch_reference`.

Intel Neural Compressor's RTN, AWQ, TEQ and GPTQ import their helpers from
``neural_compressor.torch.algorithms.weight_only.utility``, some at module level
(``from .utility import quant_tensor``), some inside functions. :func:`patch_reference`
swaps nbwoq_torch in at both places for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

from nbwoq_torch import _batches, _block_capture, _graph, _module_io, _modules, clip, quantize

__all__ = ["patch_reference", "REFERENCE_MODULE"]

REFERENCE_MODULE = "neural_compressor.torch.algorithms.weight_only.utility"

# The seed's functions and class, from the modules that define them. The constants stay
# the reference's objects: their values are equal (tests/torch/test_exports.py).
_SUBSTITUTES = {
    name: getattr(module, name)
    for module, names in (
        (quantize, ("quantize_4bit", "qdq_weight_asym", "qdq_weight_sym", "qdq_weight_actor", "quant_tensor",
                    "quant_weight_w_scale")),
        (clip, ("search_clip",)),
        (_batches, ("model_forward", "forward_wrapper", "move_input_to_device", "get_example_input")),
        (_modules, ("set_module", "fetch_module", "get_module", "get_block_prefix")),
        (_graph, ("get_absorb_layers", "get_parent", "GraphTrace")),
        (_block_capture, ("replace_forward", "recover_forward")),
        (_module_io, ("get_module_input_output",)),
    )
    for name in names
}


_ABSORB_BACKENDS = ("torchscript", "auto", "export")


def _absorb_substitutes(absorb_backend):
    """``get_absorb_layers`` and ``GraphTrace`` tracing with ``absorb_backend`` unless told otherwise."""
    if absorb_backend not in _ABSORB_BACKENDS:
        raise ValueError(f"absorb_backend must be one of {_ABSORB_BACKENDS}, got {absorb_backend!r}")

    def get_absorb_layers(model, example_inputs, supported_layers=["Linear"], folding=False,  # noqa: B006
                          backend=absorb_backend):
        return _graph.get_absorb_layers(model, example_inputs, supported_layers, folding, backend=backend)

    get_absorb_layers.__doc__ = (f":func:`nbwoq_torch.get_absorb_layers` with ``backend={absorb_backend!r}`` "
                                 "unless told otherwise (set by :func:`nbwoq_torch.patch_reference`).")

    if absorb_backend == "torchscript":  # GraphTrace's own default
        return {"get_absorb_layers": get_absorb_layers}

    class GraphTrace(_graph.GraphTrace):
        __doc__ = _graph.GraphTrace.__doc__

        def get_absorb_to_layer(self, model, example_input, op_types, skip_unsupported_layers=True,
                                backend=absorb_backend):
            return super().get_absorb_to_layer(model, example_input, op_types, skip_unsupported_layers, backend)

    return {"get_absorb_layers": get_absorb_layers, "GraphTrace": GraphTrace}


@contextlib.contextmanager
def patch_reference(module_name=REFERENCE_MODULE, *, absorb_backend="torchscript"):
    """Context manager: the reference's weight-only algorithms call nbwoq_torch inside it.

    Inside the ``with`` block, ``sys.modules[module_name]`` is a module holding the
    reference module's names with the seed's 20 functions and ``GraphTrace`` replaced by
    nbwoq_torch's (names the seed does not have, such as ``cast_fp8``, stay the
    reference's), and every loaded ``neural_compressor`` module that imported one of
    those functions from the reference module holds nbwoq_torch's instead. On exit
    everything is put back as it was, also when the block raises.

    Parameters
    ----------
    module_name : str, optional
        The reference's utility module.
    absorb_backend : {"torchscript", "auto", "export"}, optional
        How the substitute's ``get_absorb_layers`` (AWQ's absorb search) and
        ``GraphTrace.get_absorb_to_layer`` (TEQ's, with ``folding=True``) trace
        the model when the caller names no backend. The default,
        ``"torchscript"``, is the reference's own path, so every algorithm gives
        the reference's model exactly; on ``transformers`` 5.x models that means
        TorchScript fails and AWQ finds no absorb layers, as on the reference.
        ``"auto"`` falls back to ``torch.export`` when TorchScript fails: AWQ
        then finds the absorb layers and folds their scales into the layers
        before them, a different (AWQ as intended) model. ``"export"`` uses
        ``torch.export`` only.

    Yields
    ------
    types.ModuleType
        The substitute module.

    Raises
    ------
    ModuleNotFoundError
        If the reference (``neural-compressor-pt``) is not installed.
    RuntimeError
        If the module is already patched.
    ValueError
        If ``absorb_backend`` is not one of the three.

    Examples
    --------
    >>> from nbwoq_torch import patch_reference
    >>> with patch_reference():  # doctest: +SKIP
    ...     from neural_compressor.torch.quantization import RTNConfig, convert, prepare
    ...     model = convert(prepare(model, RTNConfig()))
    """
    substitutes = {**_SUBSTITUTES, **_absorb_substitutes(absorb_backend)}
    original = importlib.import_module(module_name)
    if getattr(original, "__nbwoq_patched__", False):
        raise RuntimeError(f"{module_name} is already patched by patch_reference")
    substitute = types.ModuleType(module_name, original.__doc__)
    substitute.__dict__.update({k: v for k, v in vars(original).items() if k not in ("__name__", "__doc__")})
    substitute.__dict__.update(substitutes)
    substitute.__nbwoq_patched__ = True

    # What the reference's own objects are, so that only imports of them are replaced.
    replaced = {id(getattr(original, name)): substitutes[name] for name in substitutes if hasattr(original, name)}
    parent_name, _, child = module_name.rpartition(".")
    undo = [(sys.modules, module_name, original)]
    try:
        sys.modules[module_name] = substitute
        parent = sys.modules.get(parent_name)
        if parent is not None and getattr(parent, child, None) is original:
            undo.append((parent, child, original))
            setattr(parent, child, substitute)
        root = module_name.partition(".")[0]
        for loaded_name, loaded in list(sys.modules.items()):
            if loaded is original or not (loaded_name == root or loaded_name.startswith(root + ".")):
                continue
            namespace = getattr(loaded, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for attr, value in list(namespace.items()):
                new = replaced.get(id(value))
                if new is not None and getattr(value, "__module__", None) == module_name:
                    undo.append((loaded, attr, value))
                    setattr(loaded, attr, new)
        yield substitute
    finally:
        for target, key, value in reversed(undo):
            if target is sys.modules:
                sys.modules[key] = value
            else:
                setattr(target, key, value)
