"""nbwoq_torch: nbwoq's quantization on torch tensors, and the module utilities.

A drop-in for Intel Neural Compressor's weight-only utility module: every public name of
``neural_compressor.torch.algorithms.weight_only.utility`` is here with the same
signature, so switching is a change of import::

    from nbwoq_torch import quant_tensor, search_clip, get_absorb_layers

CPU tensors (float32, float64, float16, bfloat16) are quantized in their own memory by
nbwoq's parallel Numba kernels, and the very tensor passed in is returned; tensors on
any other device run the array-API reference path on that device. nbwoq's thread count
is ``nbwoq.set_num_threads`` (it never changes torch's).

The reference's own RTN, AWQ, TEQ and GPTQ run on nbwoq_torch inside
``with nbwoq_torch.patch_reference():`` (see the migration guide).
"""

# torch first: Numba's OpenMP layer then binds to the libgomp torch loaded, and both
# libraries share one worker pool (see nbwoq/_threads.py).
try:
    import torch  # noqa: F401
except ImportError as exc:  # the core works without torch; this face does not
    raise ImportError("nbwoq_torch needs PyTorch: pip install 'nbwoq[torch]' (it pins the CPU build "
                      "torch==2.13.0); the NumPy core, 'import nbwoq', works without it") from exc

from nbwoq._tables import (
    FLOAT_MAPPING,
    FP4_BNB,
    FP4_BNB_BIT,
    FP4_E2M1,
    FP4_E2M1_BIT,
    INT_MAPPING,
    NF4,
    NF4_BIT,
)
from nbwoq_torch._absorb_plan import absorb_plan
from nbwoq_torch._batches import forward_wrapper, get_example_input, model_forward, move_input_to_device
from nbwoq_torch._block_capture import BlockInputs, capture_block_inputs, recover_forward, replace_forward
from nbwoq_torch._graph import GraphNode, GraphTrace, get_absorb_layers, get_parent
from nbwoq_torch._module_io import capture_module_io, get_module_input_output
from nbwoq_torch._patch import patch_reference
from nbwoq_torch._quantize_model import quantize_model
from nbwoq_torch._modules import fetch_module, get_block_prefix, get_module, set_module
from nbwoq_torch.clip import search_clip
from nbwoq_torch.quantize import (
    qdq_weight_actor,
    qdq_weight_asym,
    qdq_weight_sym,
    quant_tensor,
    quant_weight_w_scale,
    quantize_4bit,
)

__all__ = [
    # constants
    "FLOAT_MAPPING",
    "FP4_BNB",
    "FP4_BNB_BIT",
    "FP4_E2M1",
    "FP4_E2M1_BIT",
    "INT_MAPPING",
    "NF4",
    "NF4_BIT",
    # tensor functions
    "qdq_weight_actor",
    "qdq_weight_asym",
    "qdq_weight_sym",
    "quant_tensor",
    "quant_weight_w_scale",
    "quantize_4bit",
    "search_clip",
    # module utilities
    "GraphTrace",
    "fetch_module",
    "forward_wrapper",
    "get_absorb_layers",
    "get_block_prefix",
    "get_example_input",
    "get_module",
    "get_module_input_output",
    "get_parent",
    "model_forward",
    "move_input_to_device",
    "recover_forward",
    "replace_forward",
    "set_module",
    # beyond the seed
    "BlockInputs",
    "absorb_plan",
    "GraphNode",
    "capture_block_inputs",
    "capture_module_io",
    "patch_reference",
    "quantize_model",
]
