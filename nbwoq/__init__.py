"""nbwoq: fast, honest weight-only quantization without PyTorch.

The public names and signatures follow Intel Neural Compressor's weight-only utility
module, so callers switch by changing an import. NumPy arrays are quantized in place by
parallel Numba kernels; any other array-API array takes a reference path on its own
device.
"""

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
from nbwoq._threads import get_num_threads, set_num_threads
from nbwoq._validate import NonFiniteError
from nbwoq.absorb import AbsorbGroup, AbsorbPlan, fold_column_scale
from nbwoq.clip import search_clip
from nbwoq.hqq import refine_zero
from nbwoq.dual import DualScale, dual_scale
from nbwoq.refit import refit_int
from nbwoq.quantize import (
    qdq_weight_actor,
    qdq_weight_asym,
    qdq_weight_sym,
    quant_tensor,
    quant_weight_w_scale,
    quantize_4bit,
)
from nbwoq.formats.absorb_plan import absorb_plan
from nbwoq.formats.nbwoq_io import QuantizedTensor, dequantize, load, save
from nbwoq._version import __version__

__all__ = [
    "AbsorbGroup",
    "AbsorbPlan",
    "FLOAT_MAPPING",
    "FP4_BNB",
    "FP4_BNB_BIT",
    "FP4_E2M1",
    "FP4_E2M1_BIT",
    "INT_MAPPING",
    "NF4",
    "NF4_BIT",
    "NonFiniteError",
    "QuantizedTensor",
    "absorb_plan",
    "DualScale",
    "dequantize",
    "dual_scale",
    "fold_column_scale",
    "get_num_threads",
    "load",
    "qdq_weight_actor",
    "qdq_weight_asym",
    "qdq_weight_sym",
    "quant_tensor",
    "quant_weight_w_scale",
    "quantize_4bit",
    "refine_zero",
    "refit_int",
    "save",
    "search_clip",
    "set_num_threads",
]
