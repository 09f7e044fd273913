"""Element loads and stores for every storage dtype, inside kernels.

Kernels see four storage types and compute in two:

=========  ====================  =============  ==========
dtype      kernel sees           computes in    stored by
=========  ====================  =============  ==========
float32    float32               float32        as is
float64    float64               float64        as is
float16    uint16 bit pattern    float32        round to nearest even, once
bfloat16   int16 bit pattern     float32        round to nearest even, once
=========  ====================  =============  ==========

Numba cannot read float16 or bfloat16, so half arrays reach kernels as integer views of
their own memory (``_arrays.kernel_view``); unsigned marks IEEE half, signed marks
bfloat16. ``decode``/``encode`` are resolved per type at compile time, so one kernel
source serves all four and each compiles once per storage type.
"""

import numpy as np
from numba import types
from numba.extending import overload, register_jitable

from nbwoq._llvm import float_to_half_bits, half_bits_to_float

# What a quantization kernel writes into each element of the weight (``store``): one set
# for the integer and codebook kernels, their reference twins and their dispatchers.
STORE_NOTHING = 0  # parameters only: the weight is read, never written
STORE_UNSCALED = 1  # the code (integer), or the codebook's value for the level (level or code)
STORE_SCALED = 2  # dequantized with the group's scale: (code - zp) * scale, value * scale
STORE_OUT_SCALED = 3  # dequantized with out_scale[r, g] instead (double quantization)

#: The ``store`` names the dispatchers and reference twins take -> the kernels' constants.
STORE = {
    "nothing": STORE_NOTHING,
    "unscaled": STORE_UNSCALED,
    "scaled": STORE_SCALED,
    "out_scaled": STORE_OUT_SCALED,
}

_SHIFT = np.uint32(16)
_ROUND = np.uint32(0x7FFF)
_ONE = np.uint32(1)
_QUIET = np.uint32(0x40)


@register_jitable(inline="always")
def _bf16_bits_to_float(bits):
    # Numba widens integer arithmetic to 64 bits; narrow back before the bit cast.
    return np.uint32(np.uint32(np.uint16(bits)) << _SHIFT).view(np.float32)


@register_jitable(inline="always")
def _float_to_bf16_bits(value):
    u = np.uint32(np.float32(value).view(np.uint32))
    rounded = np.uint32((u + _ROUND + ((u >> _SHIFT) & _ONE)) >> _SHIFT)
    # NaN must stay NaN: rounding could carry its payload into the exponent.
    if value != value:
        rounded = np.uint32((u >> _SHIFT) | _QUIET)
    return np.int16(np.uint16(rounded))


def decode(element):
    """Storage element -> compute value (jitted only)."""
    raise NotImplementedError("decode is only callable from Numba kernels")


def encode(value, array):
    """Compute value -> storage element of ``array`` (jitted only)."""
    raise NotImplementedError("encode is only callable from Numba kernels")


@overload(decode, inline="always")
def _decode(element):
    if isinstance(element, types.Float):
        return lambda element: element
    if element == types.uint16:
        return lambda element: half_bits_to_float(element)
    if element == types.int16:
        return lambda element: _bf16_bits_to_float(element)
    return None


@overload(encode, inline="always")
def _encode(value, array):
    dtype = array.dtype
    if dtype == types.float32:
        return lambda value, array: np.float32(value)
    if dtype == types.float64:
        return lambda value, array: np.float64(value)
    if dtype == types.uint16:
        return lambda value, array: float_to_half_bits(np.float32(value))
    if dtype == types.int16:
        return lambda value, array: _float_to_bf16_bits(np.float32(value))
    return None
