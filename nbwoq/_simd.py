"""Fixed-width SIMD vectors for Numba kernels: LLVM's ``<8 x float>`` and kin as a Numba type.

LLVM vectorizes a loop only when it can prove its reductions may be reordered, which a
float32 sum in C's order never allows, and when it can tell arrays apart, which Numba's
arrays do not let it. Searching several independent groups side by side (one group per
lane, each lane summing in its own group's order) is exact, but only explicit vectors
make LLVM emit it. Every operation here is one IEEE operation per lane, without fastmath
flags, so a lane's result is the scalar code's bit for bit.

``Vec(dtype, lanes)`` holds float32, float64, int32 or boolean (a comparison's mask) lanes.
Arithmetic (``+ - * /`` and unary ``-``; ``+ & |`` on int32, ``& |`` on masks) and comparisons (``< > <= >= ==``
ordered, false on NaN as in C; ``!=`` unordered, true on NaN as in C) take two vectors of
one type. Vectors are built by ``load8``/``load16`` (from a contiguous array at a flat
element index), ``splat8``/``splat16`` (one scalar in every lane), and leave by ``store``.
"""

import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import lower_builtin
from numba.extending import intrinsic, models, register_model, type_callable


class Vec(types.Type):
    """``lanes`` values of ``dtype`` (float32, float64, int32 or boolean) as one LLVM vector."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vec({dtype}x{lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = ir.IntType(1) if fe_type.dtype == types.boolean else dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


_LANE_TYPES = (types.float32, types.float64, types.int32)


def _vector_pointer(context, builder, array_type, array, index, lanes):
    """Pointer to ``lanes`` elements of the contiguous ``array`` from flat element ``index``."""
    data = context.make_array(array_type)(context, builder, array).data
    element = context.get_data_type(array_type.dtype)
    at = builder.gep(data, [index])
    return builder.bitcast(at, ir.PointerType(ir.VectorType(element, lanes)))


def _loader(lanes):
    def load(typingctx, array, index):
        """The ``lanes`` values of contiguous ``array`` from flat element ``index`` on."""
        if not (isinstance(array, types.Array) and array.dtype in _LANE_TYPES and array.layout == "C"
                and isinstance(index, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            at = context.cast(builder, args[1], signature.args[1], types.intp)
            return builder.load(_vector_pointer(context, builder, array, args[0], at, lanes), align=4)

        return Vec(array.dtype, lanes)(array, index), codegen

    return intrinsic(load)


def _splatter(lanes):
    def splat(typingctx, value):
        """``value`` (float32, float64 or int32) in every one of ``lanes`` lanes."""
        if value not in _LANE_TYPES:
            return None

        def codegen(context, builder, signature, args):
            vt = ir.VectorType(context.get_value_type(value), lanes)
            one = builder.insert_element(ir.Constant(vt, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))

        return Vec(value, lanes)(value), codegen

    return intrinsic(splat)


load8, load16 = _loader(8), _loader(16)
splat8, splat16 = _splatter(8), _splatter(16)


@intrinsic
def store(typingctx, array, index, vector):
    """Write ``vector``'s lanes into contiguous ``array`` from flat element ``index`` on."""
    if not (isinstance(vector, Vec) and isinstance(array, types.Array) and array.dtype == vector.dtype
            and array.layout == "C" and array.mutable and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        builder.store(args[2], _vector_pointer(context, builder, array, args[0], at, vector.lanes), align=4)
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


_F, _I, _M = (types.float32, types.float64), (types.int32,), (types.boolean,)


def _operator(py_op, builds, result=None):
    """Type and lower ``py_op`` on two vectors of one type as the LLVM instruction
    ``builds[dtype](builder, a, b)`` (no wrapper function to compile)."""

    @type_callable(py_op)
    def _typer(context):
        def typer(a, b):
            if isinstance(a, Vec) and a == b and a.dtype in builds:
                return a if result is None else result(a)

        return typer

    @lower_builtin(py_op, Vec, Vec)
    def _lower(context, builder, signature, args):
        return builds[signature.args[0].dtype](builder, *args)


def _mask(vector):
    return Vec(types.boolean, vector.lanes)


def _each(dtypes, build):
    return {dtype: build for dtype in dtypes}


for _ops, _float, _int in (((operator.add, operator.iadd), lambda b, x, y: b.fadd(x, y), lambda b, x, y: b.add(x, y)),
                           ((operator.sub, operator.isub), lambda b, x, y: b.fsub(x, y), None),
                           ((operator.mul, operator.imul), lambda b, x, y: b.fmul(x, y), None),
                           ((operator.truediv, operator.itruediv), lambda b, x, y: b.fdiv(x, y), None)):
    for _op in _ops:  # ``a += b`` is ``a = a + b``: vectors are values
        _operator(_op, {**_each(_F, _float), **(_each(_I, _int) if _int else {})})
_operator(operator.and_, _each(_I + _M, lambda b, x, y: b.and_(x, y)))
_operator(operator.or_, _each(_I + _M, lambda b, x, y: b.or_(x, y)))
# C's comparisons: ordered (false on NaN) except ``!=``
for _op, _c in ((operator.lt, "<"), (operator.gt, ">"), (operator.le, "<="), (operator.ge, ">="), (operator.eq, "==")):
    _operator(_op, _each(_F, lambda b, x, y, c=_c: b.fcmp_ordered(c, x, y)), _mask)
_operator(operator.ne, _each(_F, lambda b, x, y: b.fcmp_unordered("!=", x, y)), _mask)


@type_callable(operator.neg)
def _type_neg(context):
    def typer(a):
        if isinstance(a, Vec) and a.dtype in _F:
            return a

    return typer


@lower_builtin(operator.neg, Vec)
def _lower_neg(context, builder, signature, args):
    return builder.fsub(ir.Constant(args[0].type, [-0.0] * args[0].type.count), args[0])  # C's -x, also of 0


@intrinsic
def select(typingctx, mask, a, b):
    """Per lane: ``a`` where ``mask`` else ``b`` (C's ``mask ? a : b``)."""
    if not (isinstance(mask, Vec) and mask.dtype == types.boolean and isinstance(a, Vec) and a == b
            and a.lanes == mask.lanes):
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return a(mask, a, b), codegen


def _float_unary(llvm_name):
    def op(typingctx, a):
        if not (isinstance(a, Vec) and a.dtype in _F):
            return None

        def codegen(context, builder, signature, args):
            vt = args[0].type
            suffix = "f32" if a.dtype == types.float32 else "f64"
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]), f"{llvm_name}.v{a.lanes}{suffix}")
            return builder.call(fn, args)

        return a(a), codegen

    return intrinsic(op)


#: ``fabsf`` per lane.
vabs = _float_unary("llvm.fabs")
#: ``sqrtf`` per lane (correctly rounded).
vsqrt = _float_unary("llvm.sqrt")


@intrinsic
def nearest_clamp(typingctx, v, lo, hi):
    """llama.cpp's ``MAX(lo, MIN(hi, nearest_int(v)))`` per lane (int32): the low mantissa
    bits of ``v + 1.5 * 2**23``, whatever ``v`` (out-of-range values wrap as in C)."""
    if not (isinstance(v, Vec) and v.dtype == types.float32 and isinstance(lo, types.Integer)
            and isinstance(hi, types.Integer)):
        return None
    out = Vec(types.int32, v.lanes)

    def codegen(context, builder, signature, args):
        n = v.lanes
        ft, it = ir.VectorType(ir.FloatType(), n), ir.VectorType(ir.IntType(32), n)
        bits = builder.bitcast(builder.fadd(args[0], ir.Constant(ft, [12582912.0] * n)), it)
        l = builder.sub(builder.and_(bits, ir.Constant(it, [0x007FFFFF] * n)), ir.Constant(it, [0x00400000] * n))
        bounds = []
        for value, vtype in zip(args[1:], signature.args[1:]):
            scalar = context.cast(builder, value, vtype, types.int32)
            one = builder.insert_element(ir.Constant(it, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
            bounds.append(builder.shuffle_vector(one, ir.Constant(it, ir.Undefined), ir.Constant(it, [0] * n)))
        l = builder.select(builder.icmp_signed(">", l, bounds[1]), bounds[1], l)
        return builder.select(builder.icmp_signed("<", l, bounds[0]), bounds[0], l)

    return out(v, lo, hi), codegen


@intrinsic
def to_float(typingctx, v):
    """int32 lanes -> float32 lanes (exact below 2**24, as C's ``(float)l``)."""
    if not (isinstance(v, Vec) and v.dtype == types.int32):
        return None

    def codegen(context, builder, signature, args):
        return builder.sitofp(args[0], ir.VectorType(ir.FloatType(), v.lanes))

    return Vec(types.float32, v.lanes)(v), codegen


@intrinsic
def widen(typingctx, v):
    """float32 lanes -> float64 lanes, exactly."""
    if not (isinstance(v, Vec) and v.dtype == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(args[0], ir.VectorType(ir.DoubleType(), v.lanes))

    return Vec(types.float64, v.lanes)(v), codegen


def _halves(builder, vector, combine):
    """Fold ``vector`` in halves (lanes k and k + n/2 combined) down to one lane."""
    n = vector.type.count
    while n > 1:
        half = n // 2
        undef = ir.Constant(vector.type, ir.Undefined)
        low = builder.shuffle_vector(vector, undef, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half))))
        high = builder.shuffle_vector(vector, undef,
                                      ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half, n))))
        vector = combine(builder, low, high)
        n = half
    return builder.extract_element(vector, ir.Constant(ir.IntType(32), 0))


def _reduction(combine, doc):
    def op(typingctx, v):
        if not (isinstance(v, Vec) and v.dtype in _F):
            return None

        def codegen(context, builder, signature, args):
            return _halves(builder, args[0], combine)

        return v.dtype(v), codegen

    op.__doc__ = doc
    return intrinsic(op)


#: The sum of the float lanes, folded in halves: a fixed order, not C's sequential one
#: (for reports, never for a stored value).
lane_sum = _reduction(lambda b, x, y: b.fadd(x, y), "Sum of the lanes, folded in halves.")
#: The largest / smallest lane. Lanes must not be NaN; of equal lanes (+0.0 and -0.0)
#: either may be returned.
lane_max = _reduction(lambda b, x, y: b.select(b.fcmp_ordered(">", y, x), y, x), "Largest lane.")
lane_min = _reduction(lambda b, x, y: b.select(b.fcmp_ordered("<", y, x), y, x), "Smallest lane.")


def _int_const(builder, vt, value):
    return ir.Constant(vt, [value] * vt.count)


@intrinsic
def trunc_int8(typingctx, v):
    """C's ``(int8_t)v`` of float32 lanes as x86 computes it: truncate to int32
    (0x80000000 when out of range), keep the low byte, sign-extend (int32 lanes)."""
    if not (isinstance(v, Vec) and v.dtype == types.float32):
        return None

    def codegen(context, builder, signature, args):
        it = ir.VectorType(ir.IntType(32), v.lanes)
        ft = args[0].type
        inside = builder.and_(builder.fcmp_ordered(">", args[0], ir.Constant(ft, [-2147483648.0] * v.lanes)),
                              builder.fcmp_ordered("<", args[0], ir.Constant(ft, [2147483648.0] * v.lanes)))
        l = builder.select(inside, builder.fptosi(args[0], it), _int_const(builder, it, -2147483648))
        return builder.sext(builder.trunc(l, ir.VectorType(ir.IntType(8), v.lanes)), it)

    return Vec(types.int32, v.lanes)(v), codegen


@intrinsic
def imin(typingctx, v, hi):
    """Per lane ``MIN(hi, v)`` of int32 lanes and an integer."""
    if not (isinstance(v, Vec) and v.dtype == types.int32 and isinstance(hi, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        it = args[0].type
        scalar = context.cast(builder, args[1], signature.args[1], types.int32)
        one = builder.insert_element(ir.Constant(it, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        top = builder.shuffle_vector(one, ir.Constant(it, ir.Undefined), ir.Constant(it, [0] * v.lanes))
        return builder.select(builder.icmp_signed(">", args[0], top), top, args[0])

    return v(v, hi), codegen


@intrinsic
def shl(typingctx, v, bits):
    """int32 lanes shifted left by the integer ``bits`` (0 to 31)."""
    if not (isinstance(v, Vec) and v.dtype == types.int32 and isinstance(bits, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        it = args[0].type
        scalar = context.cast(builder, args[1], signature.args[1], types.int32)
        one = builder.insert_element(ir.Constant(it, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return builder.shl(args[0], builder.shuffle_vector(one, ir.Constant(it, ir.Undefined),
                                                           ir.Constant(it, [0] * v.lanes)))

    return v(v, bits), codegen


@intrinsic
def store_bytes(typingctx, array, index, v):
    """The low bytes of int32 lanes ``v`` into uint8 ``array`` from flat ``index`` on."""
    if not (isinstance(v, Vec) and v.dtype == types.int32 and isinstance(array, types.Array)
            and array.dtype == types.uint8 and array.layout == "C" and array.mutable
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        low = builder.trunc(args[2], ir.VectorType(ir.IntType(8), v.lanes))
        builder.store(low, _vector_pointer(context, builder, array, args[0], at, v.lanes), align=1)
        return context.get_dummy_value()

    return types.none(array, index, v), codegen
