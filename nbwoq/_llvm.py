"""LLVM operations that Numba does not expose, as Numba intrinsics.

Numba lowers ``min``/``max`` on floats to branches that LLVM's loop vectorizer does not
recognise as reductions; ``llvm.minimum``/``llvm.maximum`` are recognised and vectorize
without any fastmath flag. They also propagate NaN, as ``torch.minimum``/``torch.clamp``
do, so a group holding a NaN yields a NaN statistic: the finite check costs nothing.

Half-precision conversions use LLVM's ``fpext``/``fptrunc`` on the IEEE ``half`` type:
exact widening and round-to-nearest-even narrowing (``vcvtph2ps``/``vcvtps2ph`` on x86).
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _binary_float_intrinsic(llvm_name, flags=()):
    @intrinsic
    def _op(typingctx, a, b):
        if not isinstance(a, types.Float) or a != b:
            return None
        sig = a(a, b)

        def codegen(context, builder, signature, args):
            ltype = context.get_value_type(signature.return_type)
            fn = builder.module.declare_intrinsic(llvm_name, [ltype], ir.FunctionType(ltype, [ltype, ltype]))
            return builder.call(fn, args, fastmath=flags)

        return sig, codegen

    return _op


def _unary_float_intrinsic(llvm_name):
    @intrinsic
    def _op(typingctx, a):
        if not isinstance(a, types.Float):
            return None
        sig = a(a)

        def codegen(context, builder, signature, args):
            ltype = context.get_value_type(signature.return_type)
            fn = builder.module.declare_intrinsic(llvm_name, [ltype], ir.FunctionType(ltype, [ltype]))
            return builder.call(fn, args)

        return sig, codegen

    return _op


#: Round half to even (``np.rint``/``torch.round``). Numba lowers ``np.rint`` on a
#: scalar to a libm call, which blocks vectorization; this is one instruction.
roundeven = _unary_float_intrinsic("llvm.roundeven")

#: NaN-propagating minimum / maximum (IEEE 754-2019 ``minimum``/``maximum``).
fminimum = _binary_float_intrinsic("llvm.minimum")
fmaximum = _binary_float_intrinsic("llvm.maximum")

#: Minimum / maximum of operands known not to be NaN (``nnan``): one ``vminps``/``vmaxps``
#: each, where x86 must emulate ``minimum``'s NaN rule (twice as slow in a min/max
#: reduction). Only for data a finiteness scan has cleared. On equal operands either may
#: be returned, so a group holding both -0.0 and +0.0 may see either as its minimum.
fmin_finite = _binary_float_intrinsic("llvm.minnum", ("nnan",))
fmax_finite = _binary_float_intrinsic("llvm.maxnum", ("nnan",))


@intrinsic
def half_bits_to_float(typingctx, bits):
    """Widen the IEEE half whose bit pattern is ``bits`` (uint16) to float32, exactly."""
    if bits != types.uint16:
        return None
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return sig, codegen


@intrinsic
def float_to_half_bits(typingctx, value):
    """Round float32 ``value`` to the nearest IEEE half (ties to even); its bit pattern."""
    if value != types.float32:
        return None
    sig = types.uint16(value)

    def codegen(context, builder, signature, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return sig, codegen
