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


def _float_intrinsic(llvm_name, arity, flags=()):
    """A Numba intrinsic calling LLVM's ``llvm_name`` on ``arity`` (1 or 2) floats of one
    type, with the fastmath ``flags``."""

    def typer(operands):
        if not isinstance(operands[0], types.Float) or any(a != operands[0] for a in operands):
            return None

        def codegen(context, builder, signature, args):
            ltype = context.get_value_type(signature.return_type)
            fn = builder.module.declare_intrinsic(llvm_name, [ltype], ir.FunctionType(ltype, [ltype] * arity))
            return builder.call(fn, args, fastmath=flags)

        return operands[0](*operands), codegen

    if arity == 1:
        @intrinsic
        def _op(typingctx, a):
            return typer((a,))
    else:
        @intrinsic
        def _op(typingctx, a, b):
            return typer((a, b))
    return _op


#: Round half to even (``np.rint``/``torch.round``). Numba lowers ``np.rint`` on a
#: scalar to a libm call, which blocks vectorization; this is one instruction.
roundeven = _float_intrinsic("llvm.roundeven", 1)

#: NaN-propagating minimum / maximum (IEEE 754-2019 ``minimum``/``maximum``).
fminimum = _float_intrinsic("llvm.minimum", 2)
fmaximum = _float_intrinsic("llvm.maximum", 2)

#: Minimum / maximum of operands known not to be NaN (``nnan``): one ``vminps``/``vmaxps``
#: each, where x86 must emulate ``minimum``'s NaN rule (twice as slow in a min/max
#: reduction). Only for data a finiteness scan has cleared. On equal operands either may
#: be returned, so a group holding both -0.0 and +0.0 may see either as its minimum.
fmin_finite = _float_intrinsic("llvm.minnum", 2, ("nnan",))
fmax_finite = _float_intrinsic("llvm.maxnum", 2, ("nnan",))


def _half_conversion(arg_type, result_type, convert, doc):
    """An intrinsic taking ``arg_type`` to ``result_type`` through an IEEE half in LLVM:
    ``convert(builder, value)`` emits the instructions."""

    def conversion(typingctx, value):
        if value != arg_type:
            return None

        def codegen(context, builder, signature, args):
            return convert(builder, args[0])

        return result_type(value), codegen

    conversion.__doc__ = doc
    return intrinsic(conversion)


#: Widen the IEEE half whose bit pattern is ``bits`` (uint16) to float32, exactly.
half_bits_to_float = _half_conversion(
    types.uint16, types.float32, lambda builder, v: builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType()),
    "Widen the IEEE half whose bit pattern is ``bits`` (uint16) to float32, exactly.")
#: Round float32 ``value`` to the nearest IEEE half (ties to even); its bit pattern.
float_to_half_bits = _half_conversion(
    types.float32, types.uint16, lambda builder, v: builder.bitcast(builder.fptrunc(v, ir.HalfType()), ir.IntType(16)),
    "Round float32 ``value`` to the nearest IEEE half (ties to even); its bit pattern.")
