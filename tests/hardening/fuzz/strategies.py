"""Hypothesis strategies of core cases: a function name and the arguments of one call.

Structure (shapes, dtypes, layouts, arguments) is drawn by Hypothesis directly so that
it shrinks; ``CASES`` maps each public tensor function of ``nbwoq`` to its strategy.
"""

import math

import numpy as np
from hypothesis import strategies as st

from nbwoq._layout import group_layout
from nbwoq._tables import DTYPES, SCHEMES

from .values import ABSENT, BF16, CODEBOOKS, INVALID_DTYPES, LAYOUTS, PROFILES, VALID_DTYPES, arrange, cast, \
    make_values, np_dtype


@st.composite
def weights(draw, allow_invalid=True, layouts=LAYOUTS, dtypes=VALID_DTYPES):
    """``(array, info)``: a weight (valid or not) and what it is made of."""
    rank = draw(st.sampled_from((2,) * 30 + (0, 1, 3))) if allow_invalid else 2
    rows = draw(st.sampled_from((0, 1, 1, 2, 3, 4, 5, 8)))
    cols = draw(st.sampled_from((0, 1, 1, 2, 3, 5, 7, 8, 16, 17, 33, 64)))
    shape = {0: (), 1: (cols,), 2: (rows, cols), 3: (2, rows, cols)}[rank]
    if allow_invalid and rarely(draw, 20):
        dtype_name = draw(st.sampled_from(INVALID_DTYPES))
    else:
        dtype_name = draw(st.sampled_from(dtypes))
    if dtype_name == "bfloat16" and BF16 is None:  # pragma: no cover
        dtype_name = "float32"
    profile = draw(st.sampled_from(PROFILES))
    seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(layouts))
    values = cast(make_values(seed, shape, profile), np_dtype(dtype_name))
    array = arrange(values, layout)
    info = dict(shape=shape, dtype=dtype_name, profile=profile, seed=seed, layout=layout)
    return array, info


def mostly(valid, bogus, one_in=30):
    """``valid`` but one time in ``one_in`` (about) ``bogus``: most calls get past the
    argument checks and reach the kernels."""
    return st.sampled_from((False,) * (one_in - 1) + (True,)).flatmap(lambda b: bogus if b else valid)


def rarely(draw, one_in):
    """True about one time in ``one_in`` (Hypothesis favours boundary integers, so a plain
    ``integers(0, n) == 0`` would be true far more often)."""
    return draw(st.sampled_from((False,) * (one_in - 1) + (True,)))


BITS_BOGUS = (4.0, True, "4", None, np.float64(4.0), -1, 0, 17, 100)


BITS = mostly(st.one_of(st.integers(1, 16), st.sampled_from((2, 3, 4, 8, np.int64(4), np.uint8(3)))),
              st.sampled_from(BITS_BOGUS))


SCHEME = mostly(st.sampled_from(SCHEMES + (ABSENT,)), st.sampled_from(("SYM", "", None, 1, "asym ")))


DTYPE = mostly(st.sampled_from(("int", "int", "int") + DTYPES + (ABSENT,)),
               st.sampled_from(("int4", "NF4", None, "float", "fp8")))


CODEBOOK_DTYPE = mostly(st.sampled_from(CODEBOOKS + (ABSENT,)), st.sampled_from(("int", "NF4", None)))


FLAG = mostly(st.sampled_from((True, False, np.bool_(True), ABSENT)), st.sampled_from((1, 0, "yes", None)))


QUANTILE_SCALAR = mostly(
    st.one_of(st.floats(0.5, 1.0), st.sampled_from((1.0, 0.9, 0.805, 1e-45, 5e-324, np.float32(0.95),
                                                    np.float16(0.5), 1, ABSENT))),
    st.one_of(st.floats(-0.5, 1.5), st.sampled_from((math.nan, math.inf, -0.0, 0.0, True, "0.9", None, [0.9], 1j))),
    one_in=8,
)


QUANTILE_ARRAY_KINDS = ("good",) * 8 + ("wrong-shape", "int", "zero", "above-one", "nan", "float16", "scalar-0d")


def group_size_strategy(cols):
    return mostly(st.one_of(st.integers(1, cols + 1), st.sampled_from((-1, -1, 1, 4, 32, 128, np.int32(4)))),
                  st.one_of(st.integers(-2, 0), st.sampled_from((2.0, None, "8", True))), one_in=8)


def quantile_array(kind, rows, n_groups, rng):
    shape = (rows, n_groups)
    if kind == "good":
        return rng.uniform(0.8, 1.0, shape).astype(np.float32)
    if kind == "wrong-shape":
        return rng.uniform(0.8, 1.0, (rows + 1, n_groups)).astype(np.float32)
    if kind == "int":
        return np.ones(shape, dtype=np.int32)
    if kind == "zero":
        a = rng.uniform(0.8, 1.0, shape).astype(np.float32)
        a.flat[: a.size and 1] = 0.0
        return a if a.size else np.zeros((rows + 1, 1), np.float32)
    if kind == "above-one":
        return np.full(shape if rows * n_groups else (rows + 1, 1), 1.5, dtype=np.float32)
    if kind == "nan":
        return np.full(shape if rows * n_groups else (rows + 1, 1), np.nan, dtype=np.float32)
    if kind == "float16":
        return rng.uniform(0.8, 1.0, shape).astype(np.float16)
    if kind == "scalar-0d":
        return np.asarray(0.9, dtype=np.float32)
    raise AssertionError(kind)


def _layout_of(shape, group_size):
    """n_groups of a 2-D weight for a valid group size (1 group otherwise)."""
    rows, cols = shape
    if isinstance(group_size, (int, np.integer)) and not isinstance(group_size, (bool, np.bool_)) and (
            group_size == -1 or group_size > 0):
        return group_layout(cols, int(group_size))[1]
    return group_layout(cols, -1)[1]


@st.composite
def quantiles(draw, shape, n_groups):
    if len(shape) == 2 and rarely(draw, 5):
        kind = draw(st.sampled_from(QUANTILE_ARRAY_KINDS))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        return quantile_array(kind, shape[0], n_groups, rng)
    return draw(QUANTILE_SCALAR)


def _shape2(info):
    return info["shape"] if len(info["shape"]) == 2 else (1, 1)


@st.composite
def quant_tensor_cases(draw, weight_strategy=None):
    w, info = draw(weights() if weight_strategy is None else weight_strategy)
    cols = _shape2(info)[1]
    args = {"bits": draw(BITS), "group_size": draw(group_size_strategy(cols)), "scheme": draw(SCHEME),
            "dtype": draw(DTYPE), "return_int": draw(FLAG), "full_range": draw(FLAG)}
    n_groups = _layout_of(_shape2(info), args["group_size"])
    args["quantile"] = draw(quantiles(info["shape"], n_groups))
    kw = {}
    if rarely(draw, 4):
        kw["check_finite"] = draw(st.sampled_from((False, True, False, True, False, "no")))
    if rarely(draw, 4):
        kw["double_quant"] = draw(mostly(st.sampled_from((True, True, False)), st.just(1)))
        for key, strat in (("double_quant_dtype", DTYPE), ("double_quant_bits", BITS),
                           ("double_quant_scheme", SCHEME),
                           ("double_quant_group_size", mostly(st.sampled_from((-1, 1, 2, 4, 256)), st.sampled_from((0, -3, 2.0)))),
                           ("double_quant_return_int", FLAG)):
            if draw(st.booleans()):
                kw[key] = draw(strat)
    if rarely(draw, 8):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        rows = _shape2(info)[0]
        kw["scale"] = draw(st.sampled_from((
            rng.uniform(0.1, 1.0, (rows, n_groups)).astype(np.float32), np.ones((rows + 1, 1), np.float32), None,
            [[1.0]])))
    if rarely(draw, 8):
        kw["cast_int"] = draw(FLAG)
    if rarely(draw, 16):
        kw["groupsize"] = 32  # a typo: refused
    return dict(func="quant_tensor", weight=w, info=info, args=_present(args), kwargs=_present(kw))


@st.composite
def rowwise_cases(draw, func, weight_strategy=None):
    w, info = draw(weights() if weight_strategy is None else weight_strategy)
    args = {"quantile": draw(quantiles(info["shape"], 1 if _shape2(info)[1] else 0)), "return_int": draw(FLAG)}
    if func in ("qdq_weight_asym", "qdq_weight_sym", "qdq_weight_actor"):
        args["bits"] = draw(BITS)
    if func in ("qdq_weight_sym", "qdq_weight_actor"):
        args["full_range"] = draw(FLAG)
    if func == "qdq_weight_actor":
        args["scheme"] = draw(SCHEME)
        args["dtype"] = draw(DTYPE)
        if args["bits"] is ABSENT:
            args["bits"] = 4
        if args["scheme"] is ABSENT:
            args["scheme"] = "sym"
    if func == "quantize_4bit":
        args["dtype"] = draw(CODEBOOK_DTYPE)
    kw = {}
    if rarely(draw, 4):
        kw["check_finite"] = draw(st.sampled_from((False, True, False, True, False, "no")))
    if rarely(draw, 5):
        kw["double_quant"] = draw(FLAG)
    if func in ("quantize_4bit", "qdq_weight_actor") and rarely(draw, 4):
        rows, cols = _shape2(info)
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        kw["scale"] = draw(st.sampled_from((
            rng.uniform(0.1, 2.0, (rows, 1 if cols else 0)).astype(np.float32), np.ones((rows + 1, 1), np.float32),
            None, np.ones((rows, 1 if cols else 0), np.int32))))
    if func in ("quantize_4bit", "qdq_weight_actor") and rarely(draw, 5):
        kw["cast_int"] = draw(FLAG)
    if rarely(draw, 16):
        kw["bogus"] = 1
    return dict(func=func, weight=w, info=info, args=_present(args), kwargs=_present(kw))


SCALE_KINDS = ("good", "good", "good", "zeros-some", "negative", "nan", "inf", "wrong-shape", "int", "list", "float16",
               "float64", "scalar")


def scale_array(kind, rows, n_groups, rng):
    shape = (rows, n_groups)
    if kind == "good":
        return rng.uniform(0.01, 1.0, shape).astype(np.float32)
    if kind == "zeros-some":
        a = rng.uniform(0.01, 1.0, shape).astype(np.float32)
        a[rng.random(shape) < 0.5] = 0.0
        return a
    if kind == "negative":
        return -rng.uniform(0.01, 1.0, shape).astype(np.float32)
    if kind == "nan":
        return np.full(shape, np.nan, np.float32)
    if kind == "inf":
        return np.full(shape, np.inf, np.float32)
    if kind == "wrong-shape":
        return np.ones((rows, n_groups + 1), np.float32)
    if kind == "int":
        return np.ones(shape, np.int32)
    if kind == "list":
        return np.ones(shape, np.float32).tolist()
    if kind == "float16":
        return rng.uniform(0.01, 1.0, shape).astype(np.float16)
    if kind == "float64":
        return rng.uniform(0.01, 1.0, shape)
    if kind == "scalar":
        return 0.5
    raise AssertionError(kind)


ZP_KINDS = ("none", "none", "float", "int", "uint8", "wrong-shape", "nan", "bool")


def zp_array(kind, rows, n_groups, rng):
    shape = (rows, n_groups)
    if kind == "none":
        return None
    if kind == "float":
        return rng.integers(0, 16, shape).astype(np.float32)
    if kind == "int":
        return rng.integers(0, 16, shape).astype(np.int32)
    if kind == "uint8":
        return rng.integers(0, 16, shape).astype(np.uint8)
    if kind == "wrong-shape":
        return np.zeros((rows + 1, n_groups), np.float32)
    if kind == "nan":
        return np.full(shape, np.nan, np.float32)
    if kind == "bool":
        return np.zeros(shape, np.bool_)
    raise AssertionError(kind)


@st.composite
def w_scale_cases(draw, weight_strategy=None):
    w, info = draw(weights() if weight_strategy is None else weight_strategy)
    rows, cols = _shape2(info)
    args = {"group_size": draw(group_size_strategy(cols)), "dtype": draw(DTYPE)}
    n_groups = _layout_of((rows, cols), args["group_size"])
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    args["scale"] = scale_array(draw(st.sampled_from(SCALE_KINDS)), rows, n_groups, rng)
    args["zp"] = zp_array(draw(st.sampled_from(ZP_KINDS)), rows, n_groups, rng)
    if draw(st.booleans()):
        args["bits"] = draw(st.one_of(BITS, st.just(None)))
    kw = {}
    if rarely(draw, 4):
        kw["check_finite"] = draw(st.sampled_from((False, True, False, True, False, "no")))
    return dict(func="quant_weight_w_scale", weight=w, info=info, args=_present(args), kwargs=_present(kw))


GRID = st.one_of(st.just(ABSENT), st.just(None), st.integers(-1, 60),
                 st.sampled_from(([1.0, 0.9], (0.95,), np.array([1.0, 0.99, 0.9]), [], [1.5], [0.0], [0.9, "x"],
                                  "abc", True, np.ones((2, 2)), [math.nan], 2.5)))


@st.composite
def search_clip_cases(draw, weight_strategy=None):
    layouts = LAYOUTS + ("readonly", "readonly")
    w, info = draw(weights(layouts=layouts) if weight_strategy is None else weight_strategy)
    cols = _shape2(info)[1]
    args = {"bits": draw(BITS), "group_size": draw(group_size_strategy(cols)), "scheme": draw(SCHEME),
            "dtype": draw(DTYPE), "enable_full_range": draw(FLAG), "per_group": draw(FLAG), "grid": draw(GRID)}
    return dict(func="search_clip", weight=w, info=info, args=_present(args), kwargs={})


def _present(d):
    return {k: v for k, v in d.items() if v is not ABSENT}


CASES = {
    "quant_tensor": quant_tensor_cases,
    "quantize_4bit": lambda **k: rowwise_cases("quantize_4bit", **k),
    "qdq_weight_asym": lambda **k: rowwise_cases("qdq_weight_asym", **k),
    "qdq_weight_sym": lambda **k: rowwise_cases("qdq_weight_sym", **k),
    "qdq_weight_actor": lambda **k: rowwise_cases("qdq_weight_actor", **k),
    "quant_weight_w_scale": w_scale_cases,
    "search_clip": search_clip_cases,
}
