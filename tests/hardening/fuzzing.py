"""Fuzz targets over every public tensor function of ``nbwoq`` and ``nbwoq_torch``.

Shared by the short profile in the regular suite (``test_fuzz_core.py``,
``test_fuzz_torch.py``) and the long run (``scripts/fuzz_long.py``). Each target is a
Hypothesis strategy of *cases* (a function and the arguments of one call) and a checker
that makes the call and judges it against the SPEC:

* An argument the SPEC calls bad (``expected_errors``) must make the call raise
  ``ValueError`` or ``TypeError`` whose message names that argument, and the input must
  then be byte-identical to what it was. Any other exception is a failure.
* Otherwise the call must succeed and its result must be valid: the very object passed
  in is returned, parameters have shape (rows, n_groups) in the compute dtype, codes lie
  in the format's range, and the values equal an independent computation (the array-API
  reference twin under ``array_api_strict`` on a contiguous float32/float64 copy; for
  half inputs that result rounded once, SPEC deviation 1; for torch tensors nbwoq's
  NumPy result on the same values).

Values come from a NumPy generator seeded by Hypothesis, so a failure prints the seed
and replays exactly; structure (shapes, dtypes, layouts, arguments) is drawn by
Hypothesis directly so that it shrinks.
"""

import math
import os
import tempfile

import numpy as np
from hypothesis import strategies as st

import nbwoq
from nbwoq._layout import group_layout
from nbwoq._tables import DTYPES, FLOAT_MAPPING, INT_MAPPING, SCHEMES

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

try:
    import array_api_strict
except ImportError:  # pragma: no cover
    array_api_strict = None

ABSENT = "<absent>"  # an argument left to its default

VALID_DTYPES = ("float16", "bfloat16", "float32", "float64")
INVALID_DTYPES = ("int8", "int32", "int64", "uint16", "bool", "complex64", "longdouble", ">f4")
CODEBOOKS = tuple(FLOAT_MAPPING)

# Magnitudes a row is drawn at: ordinary, tiny but normal, subnormal in float32, huge,
# and the largest finite float16 / float32 values.
MAGNITUDES = (1.0, 1.0, 1.0, 1e-3, 1e-30, 1e-41, 1e-44, 1e30, 6e4, 3e38)
SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 0.0)


def np_dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


# --------------------------------------------------------------------------- values


def make_values(seed, shape, profile):
    """float64 values of ``shape``: rows at random magnitudes, zero rows, specials."""
    rng = np.random.default_rng(seed)
    v = np.asarray(rng.standard_normal(shape))
    if v.ndim == 2 and v.size:
        scale = rng.choice(MAGNITUDES, size=(shape[0], 1)) if profile != "plain" else 1.0
        v = v * scale
        if profile in ("zeros", "mixed"):
            v[rng.random(shape[0]) < 0.3] = 0.0
        if profile in ("positive", "mixed"):
            v = np.abs(v)
        if profile in ("specials", "mixed"):
            mask = rng.random(shape) < 0.05
            v[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
        if profile == "ties":  # values on the grid of a small step: rounding ties
            v = np.round(v * 4) / 4
    return v


def cast(values, dtype):
    """``values`` (float64) in ``dtype``; out-of-range values become what NumPy makes them."""
    with np.errstate(all="ignore"):
        if dtype.kind in "iub":
            return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).clip(-100, 100).astype(dtype)
        return values.astype(dtype)


def arrange(a, layout):
    """``a`` (a NumPy array) in the memory layout ``layout``; same values."""
    if a.ndim != 2 or layout == "C":
        return np.ascontiguousarray(a)
    rows, cols = a.shape
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "cols-strided":
        buf = np.zeros((rows, 2 * cols), dtype=a.dtype)
        buf[:, ::2] = a
        return buf[:, ::2]
    if layout == "rows-strided":
        buf = np.zeros((2 * rows, cols), dtype=a.dtype)
        buf[::2] = a
        return buf[::2]
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    if layout == "readonly":
        out = np.array(a)
        out.setflags(write=False)
        return out
    if layout == "unaligned":
        if a.dtype.itemsize == 1:
            return np.array(a)
        buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
        out = buf[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    if layout == "memmap-readonly":
        f = tempfile.NamedTemporaryFile(suffix=".bin", delete=False)
        f.write(np.ascontiguousarray(a).tobytes())
        f.close()
        if a.size == 0:
            return np.array(a)  # an empty file cannot be mapped
        return np.memmap(f.name, dtype=a.dtype, mode="r", shape=a.shape)
    raise AssertionError(layout)


PROFILES = ("plain", "plain", "plain", "magnitudes", "magnitudes", "zeros", "positive", "specials", "mixed", "ties")
LAYOUTS = ("C", "C", "C", "C", "F", "cols-strided", "rows-strided", "reversed", "readonly", "unaligned")


def snapshot(x):
    """The bytes and strides of an array-like argument (None for anything else)."""
    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape, np.array(x).tobytes())
    if _is_torch(x):
        t = _dense(x)
        if t is None:
            return ("meta", tuple(x.shape))
        t = t.cpu().contiguous()
        if t.dtype == _torch().bfloat16:
            t = t.view(_torch().int16)
        elif t.dtype in (_torch().float8_e4m3fn,):
            t = t.view(_torch().uint8)
        return (str(x.dtype), tuple(x.shape), x.stride() if x.layout == _torch().strided else None,
                t.numpy().tobytes())
    return None


def _torch():
    import torch

    return torch


def _is_torch(x):
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# --------------------------------------------------------------------------- strategies


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

# --------------------------------------------------------------------------- the SPEC's refusals


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_flag(v):
    return isinstance(v, (bool, np.bool_))


def _quantile_bad(q, shape, n_groups):
    """Whether ``quantile`` is refused for a weight of ``shape`` with ``n_groups``."""
    if isinstance(q, (bool, np.bool_)):
        return True
    if isinstance(q, (int, float, np.floating, np.integer)):
        return not (0.0 < float(q) <= 1.0)
    if isinstance(q, np.ndarray):
        if q.shape != (shape[0], n_groups) or q.dtype.kind != "f":
            return True
        return not bool(np.all((q > 0) & (q <= 1)))
    return True


class Expectation:
    """What the SPEC says about one call: the arguments that must be refused (empty: the
    call must succeed), and whether the weight is returned untouched (``bits <= 0``)."""

    def __init__(self):
        self.bad = set()
        self.untouched = False
        self.may_fail = set()  # refusals the SPEC allows without demanding them

    def __repr__(self):
        return f"Expectation(bad={sorted(self.bad)}, untouched={self.untouched}, may_fail={sorted(self.may_fail)})"


def weight_problem(w, info, writable):
    """Why the core refuses a weight (None when it is acceptable)."""
    if not isinstance(w, np.ndarray):
        return "type"
    if info["dtype"] not in VALID_DTYPES:
        return "dtype"
    if len(info["shape"]) != 2:
        return "rank"
    if writable and info["layout"] in ("readonly", "memmap-readonly"):
        return "readonly"
    if writable and info["layout"] == "expand" and info["shape"][0] > 1 and info["shape"][1] > 0:
        return "overlap"
    return None


def non_finite(w_values):
    return not bool(np.all(np.isfinite(w_values.astype(np.float64))))


def expected_errors(case, weight_name="weight", torch_face=False):
    """The SPEC's refusals for ``case`` (see ``Expectation``)."""
    func, info = case["func"], case["info"]
    # tensors the torch face gets reach the core as NumPy views of the same memory
    a = {k: _np(v) if _is_torch(v) else v for k, v in case["args"].items()}
    kw = {k: _np(v) if _is_torch(v) else v for k, v in case["kwargs"].items()}
    # On the reference path parameter arrays must be of the weight's namespace (torch):
    # NumPy ones, which the kernel path takes, are refused there.
    foreign = {k for k, v in {**case["args"], **case["kwargs"]}.items()
               if case.get("reference_path") and isinstance(v, np.ndarray)}
    e = Expectation()
    bad = e.bad
    writes = func != "search_clip"
    shape = info["shape"]
    wp = (torch_weight_problem if torch_face else weight_problem)(case["weight"], info, writes)
    if torch_face and wp in ("type", "layout", "overlap"):
        bad.add(weight_name)  # the face checks these before handing anything to the core
    values = case.get("values")
    finite_check = kw.get("check_finite", a.get("check_finite", True))

    def need_weight():
        if wp is not None:
            bad.add(weight_name)

    def check_values():
        if wp is None and finite_check is True and values is not None and non_finite(values):
            bad.add(weight_name)

    def flag(name, value, default=False):
        if not _is_flag(a.get(name, kw.get(name, default))):
            bad.add(name)

    def n_groups_of(gs):
        return _layout_of(shape, gs) if len(shape) == 2 else 1

    if func == "quant_tensor":
        known = {"check_finite", "double_quant", "scale", "cast_int", "double_quant_dtype", "double_quant_bits",
                 "double_quant_scheme", "double_quant_group_size", "double_quant_return_int"}
        for k in kw:
            if k not in known:
                bad.add(k)
        for k in ("check_finite", "double_quant", "cast_int", "double_quant_return_int"):
            if k in kw and not _is_flag(kw[k]):
                bad.add(k)
        bits = a.get("bits", 4)
        if not _is_int(bits) or bits > 16:
            bad.add("bits")
        gs = a.get("group_size", -1)
        if not _is_int(gs) or gs == 0 or gs < -1:
            bad.add("group_size")
        scheme = a.get("scheme", "asym")
        if scheme not in SCHEMES:
            bad.add("scheme")
        dtype = a.get("dtype", "int")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            bad.add("dtype")
        dq_dtype = kw.get("double_quant_dtype", "int")
        if not isinstance(dq_dtype, str) or dq_dtype not in DTYPES:
            bad.add("double_quant_dtype")
        dq_bits = kw.get("double_quant_bits", 8)
        if not _is_int(dq_bits) or dq_bits > 16 or dq_bits <= 0:
            bad.add("double_quant_bits")
        if kw.get("double_quant_scheme", "asym") not in SCHEMES:
            bad.add("double_quant_scheme")
        dq_gs = kw.get("double_quant_group_size", 256)
        if not _is_int(dq_gs) or dq_gs == 0 or dq_gs < -1:
            bad.add("double_quant_group_size")
        if bad:
            return e
        codebook = dtype in FLOAT_MAPPING
        if not codebook and (kw.get("scale") is not None or kw.get("cast_int", False)):
            bad.update({"scale", "cast_int"} & set(kw))
            return e
        if kw.get("double_quant") and kw.get("scale") is not None:
            bad.update({"double_quant", "scale"})
            return e
        return_int = a.get("return_int", False)
        if kw.get("double_quant_return_int") and kw.get("double_quant") and return_int is not True \
                and not (isinstance(return_int, np.bool_) and return_int):
            bad.update({"double_quant_return_int", "return_int"})
            return e
        if bits <= 0:
            if (torch_weight_problem if torch_face else weight_problem)(case["weight"], info, False) is not None:
                bad.add(weight_name)
            e.untouched = True
            return e
        need_weight()
        flag("return_int", return_int)
        flag("full_range", a.get("full_range", False))
        if bad:
            return e
        if not codebook and scheme == "sym" and a.get("full_range", False) and bits == 1:
            bad.add("full_range")
            return e
        n_groups = n_groups_of(gs)
        if kw.get("scale") is not None and not kw.get("double_quant"):
            s = kw["scale"]
            if not isinstance(s, np.ndarray) or s.shape != (shape[0], n_groups) or "scale" in foreign:
                bad.add("scale")
                return e
        if _quantile_bad(a.get("quantile", 1.0), shape, n_groups) or "quantile" in foreign:
            bad.add("quantile")
            return e
        check_values()
        return e

    if func in ("quantize_4bit", "qdq_weight_asym", "qdq_weight_sym", "qdq_weight_actor"):
        accepted = {"check_finite", "double_quant"}
        codebook = False
        if func == "qdq_weight_actor":
            bits = a.get("bits")
            if not _is_int(bits) or bits > 16 or bits <= 0:
                bad.add("bits")
                return e
            if a.get("scheme") not in SCHEMES:
                bad.add("scheme")
                return e
            dtype = a.get("dtype", "int")
            if not isinstance(dtype, str) or dtype not in DTYPES:
                bad.add("dtype")
                return e
            codebook = dtype in FLOAT_MAPPING
        elif func == "quantize_4bit":
            codebook = True
        if codebook:
            accepted |= {"scale", "cast_int"}
        for k in kw:
            if k not in accepted:
                bad.add(k)
        for k in ("check_finite", "double_quant", "cast_int"):
            if k in kw and k in accepted and not _is_flag(kw[k]):
                bad.add(k)
        if bad:
            return e
        if func == "quantize_4bit":
            dtype = a.get("dtype", "nf4")
            if not isinstance(dtype, str) or dtype not in FLOAT_MAPPING:
                bad.add("dtype")
                return e
        if func in ("qdq_weight_asym", "qdq_weight_sym"):
            bits = a.get("bits", 4)
            if not _is_int(bits) or bits > 16 or bits <= 0:
                bad.add("bits")
                return e
        need_weight()
        flag("return_int", a.get("return_int", False))
        if "full_range" in a and (codebook or func != "qdq_weight_asym"):
            flag("full_range", a["full_range"])
        if bad:
            return e
        sym = func == "qdq_weight_sym" or (func == "qdq_weight_actor" and a.get("scheme") == "sym")
        if not codebook and sym and a.get("full_range", False) and a.get("bits", 4) == 1:
            bad.add("full_range")
            return e
        n_groups = 1 if shape[1] else 0
        if kw.get("scale") is not None:
            s = kw["scale"]
            if not isinstance(s, np.ndarray) or s.shape != (shape[0], n_groups) or s.dtype.kind != "f" \
                    or "scale" in foreign:
                bad.add("scale")
                return e
        if _quantile_bad(a.get("quantile", 1.0), shape, n_groups) or "quantile" in foreign:
            bad.add("quantile")
            return e
        check_values()
        return e

    if func == "quant_weight_w_scale":
        need_weight()
        gs = a.get("group_size", -1)
        if not _is_int(gs) or gs == 0 or gs < -1:
            bad.add("group_size")
        dtype = a.get("dtype", "int")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            bad.add("dtype")
        flag("check_finite", kw.get("check_finite", True))
        if bad:
            return e
        n_groups = n_groups_of(gs)
        s = a["scale"]
        if not isinstance(s, np.ndarray) or s.dtype.kind != "f" or s.shape != (shape[0], n_groups) \
                or "scale" in foreign:
            bad.add("scale")
            return e
        zp = a.get("zp")
        if zp is not None:
            if dtype in FLOAT_MAPPING or not isinstance(zp, np.ndarray) or zp.dtype.kind not in "fiu" \
                    or zp.shape != (shape[0], n_groups) or "zp" in foreign:
                bad.add("zp")
                return e
        bits = a.get("bits")
        if bits is not None and (not _is_int(bits) or bits > 16 or bits <= 0):
            bad.add("bits")
            return e
        check_values()
        return e

    if func == "search_clip":
        need_weight()
        bits = a.get("bits", 4)
        if not _is_int(bits) or bits > 16:
            bad.add("bits")
        gs = a.get("group_size", 32)
        if not _is_int(gs) or gs == 0 or gs < -1:
            bad.add("group_size")
        if a.get("scheme", "asym") not in SCHEMES:
            bad.add("scheme")
        dtype = a.get("dtype", "int")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            bad.add("dtype")
        flag("enable_full_range", a.get("enable_full_range", False))
        flag("per_group", a.get("per_group", False))
        grid = a.get("grid")
        if grid is not None and not _grid_ok(grid):
            bad.add("grid")
        if bad:
            return e
        if dtype == "int" and a.get("scheme", "asym") == "sym" and a.get("enable_full_range", False) and bits == 1:
            bad.add("enable_full_range")
            return e
        if bits <= 0:
            return e
        if values is not None and non_finite(values):
            bad.add(weight_name)
            return e
        if values is not None and (_extreme(values) or _too_large_for_squares(values, info)):
            e.may_fail.add(weight_name)  # scales that over- or underflow: no finite error to compare
        return e
    raise AssertionError(func)


def _grid_ok(grid):
    if isinstance(grid, (bool, np.bool_)):
        return False
    if _is_int(grid):
        return grid >= 1
    if isinstance(grid, (str, bytes)) or not hasattr(grid, "__len__"):
        return False
    if isinstance(grid, np.ndarray) and grid.ndim != 1:
        return False
    if len(grid) == 0:
        return False
    for v in grid:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating, np.integer)):
            return False
        if not 0.0 < float(v) <= 1.0:
            return False
    return True


def _too_large_for_squares(values, info):
    """Errors whose squares overflow the compute dtype (search_clip scores squared errors)."""
    limit = 1e150 if info["dtype"] == "float64" else 1e18
    return bool(values.size) and float(np.max(np.abs(values))) > limit


def _extreme(values):
    """Values whose group ranges may over- or underflow the compute dtype."""
    a = np.abs(values.astype(np.float64))
    nz = a[a > 0]
    return bool(nz.size) and (nz.max() > 1e37 or nz.min() < 1e-36)


# --------------------------------------------------------------------------- checking


class FuzzFailure(AssertionError):
    pass


def describe(case):
    info = case["info"]
    args = {k: (f"<{type(v).__name__} {getattr(v, 'shape', '')} {getattr(v, 'dtype', '')}>"
                if hasattr(v, "shape") else v) for k, v in {**case["args"], **case["kwargs"]}.items()}
    return f"{case['func']}(weight={info}, {args})"


def message_names(exc, names, weight_name):
    msg = str(exc)
    aliases = {weight_name, "weight", "tensor"} if weight_name in names else set()
    return any(n in msg for n in set(names) | aliases)


def _compute_dtype(dtype_name):
    return np.dtype(np.float64) if dtype_name == "float64" else np.dtype(np.float32)


def _strict(x):
    """A NumPy argument as an ``array_api_strict`` array (float16 widened: the standard has
    no half type, and float16 values are exact in float32)."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16:
            x = x.astype(np.float32)
        return array_api_strict.asarray(np.array(x, order="C", copy=True))
    return x


def _np(x):
    if x is None:
        return None
    if _is_torch(x):
        t = x.detach().cpu()
        if t.dtype == _torch().bfloat16:
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _same(a, b):
    a, b = _np(a), _np(b)
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape:
        return False
    with np.errstate(all="ignore"):
        return bool(np.array_equal(a.astype(np.float64), b.astype(np.float64), equal_nan=True))


def _unpack(result, keep):
    if keep:
        if not (isinstance(result, tuple) and len(result) == 3):
            raise FuzzFailure(f"expected (weight, scale, zp), got {type(result).__name__}")
        return result
    return result, None, None


def _keeps_params(case):
    a, kw = case["args"], case["kwargs"]
    if case["func"] in ("quant_weight_w_scale", "search_clip"):
        return False
    if case["func"] == "quant_tensor":  # SPEC deviation 3: without return_int, the weight
        return bool(a.get("return_int", False))
    return bool(a.get("return_int", False)) or bool(kw.get("double_quant", False))


def reference_result(case):
    """The same call on the array-API reference path (``array_api_strict``) over a
    contiguous copy in the compute dtype; returns ``(out, scale, zp)`` as NumPy arrays,
    ``out`` rounded once to the weight's dtype."""
    info = case["info"]
    cdt = _compute_dtype(info["dtype"])
    x = array_api_strict.asarray(np.array(case["values"], dtype=cdt, order="C", copy=True))
    args = {k: _strict(v) for k, v in case["args"].items()}
    kwargs = {k: _strict(v) for k, v in case["kwargs"].items()}
    with np.errstate(all="ignore"):  # array_api_strict computes with NumPy: 0/0 is expected here
        result = getattr(nbwoq, case["func"])(x, **args, **kwargs)
    out, scale, zp = _unpack(result, _keeps_params(case))
    if isinstance(scale, tuple):  # double_quant_return_int: (codes, hyper_scale, mean)
        scale = tuple(_np(s) for s in scale)
    else:
        scale = _np(scale)
    with np.errstate(all="ignore"):
        out = np.asarray(out).astype(np_dtype(info["dtype"]))
    return out, scale, _np(zp)


def _params_equal(got, want):
    if isinstance(want, tuple) or isinstance(got, tuple):
        return isinstance(got, tuple) and isinstance(want, tuple) and len(got) == len(want) and all(
            _same(g, w) for g, w in zip(got, want))
    return _same(got, want)


def _code_range(case):
    """``(kind, qmin, qmax)`` or the codebook's codes, for a plain ``return_int`` call."""
    a = case["args"]
    func = case["func"]
    dtype = a.get("dtype", "nf4" if func == "quantize_4bit" else "int")
    if dtype in FLOAT_MAPPING:
        return set(INT_MAPPING[dtype])
    bits = int(a.get("bits", 4))
    sym = a.get("scheme", "asym") == "sym" if func in ("quant_tensor", "qdq_weight_actor") else func == "qdq_weight_sym"
    from nbwoq._integer import int_range

    qmin, qmax, _ = int_range(bits, sym, bool(a.get("full_range", False)))
    return qmin, qmax


def check_codes(case, out, scale):
    """Codes of a plain ``return_int`` call lie in the format's range (NaN only where the
    group's scale is degenerate: zero or not finite)."""
    kw = case["kwargs"]
    if not case["args"].get("return_int", False) or kw.get("double_quant") or kw.get("cast_int") or kw.get("scale") \
            is not None:
        return
    codes = _np(out).astype(np.float64)
    if codes.size == 0:
        return
    rng = _code_range(case)
    finite = ~np.isnan(codes)
    if isinstance(rng, set):
        ok = np.isin(codes[finite], sorted(rng))
    else:
        # SPEC deviation 1: a half weight holds each code rounded once to its dtype, so
        # wide codes (beyond 8 bits in bfloat16, 11 in float16) may round to the next
        # representable whole number; the bounds are rounded the same way.
        dt = np_dtype(case["info"]["dtype"])
        with np.errstate(over="ignore"):  # 65535 is inf in float16
            lo, hi = (float(np.asarray(b, dtype=np.float64).astype(dt)) for b in rng)
        c = codes[finite]
        ok = (c >= lo) & (c <= hi) & (c == np.round(c))
    if not bool(np.all(ok)):
        raise FuzzFailure(f"codes out of range {rng}: {np.unique(codes[finite][~ok])[:8]}")
    if not bool(np.all(finite)):
        s = _np(scale).astype(np.float64)
        degenerate = ~np.isfinite(s) | (s == 0)
        if not bool(degenerate.any()):
            raise FuzzFailure("NaN codes although every scale is finite and non-zero")


def validate_core(case, result, expect, before):
    """Judge a successful core call (see the module notes)."""
    func, info, w = case["func"], case["info"], case["weight"]
    if expect.untouched:
        if result is not w or snapshot(w) != before:
            raise FuzzFailure("bits <= 0 must return the weight untouched")
        return "untouched"
    if func == "search_clip":
        if snapshot(w) != before:
            raise FuzzFailure("search_clip wrote to its weight")
        return _validate_clip(case, result)
    keep = _keeps_params(case)
    out, scale, zp = _unpack(result, keep)
    if out is not w:
        raise FuzzFailure("the weight passed in must be returned (same object)")
    rows, cols = info["shape"]
    cdt = _compute_dtype(info["dtype"])
    if keep and not isinstance(scale, tuple):
        gs = case["args"].get("group_size", -1) if func == "quant_tensor" else -1
        want = (rows, group_layout(cols, int(gs))[1])
        for name, p in (("scale", scale), ("zp", zp)):
            if p is None or (name == "scale" and case["kwargs"].get("scale") is not None):
                continue  # a given scale is returned as given
            p = _np(p)
            if p.shape != want or p.dtype != cdt:
                raise FuzzFailure(f"{name} has shape {p.shape} dtype {p.dtype}, expected {want} {cdt}")
    if keep:
        check_codes(case, out, scale)
    if array_api_strict is not None:
        try:
            ref_out, ref_scale, ref_zp = reference_result(case)
        except Exception as exc:
            raise FuzzFailure(f"the reference path (array_api_strict) raised {type(exc).__name__}: {exc}") from exc
        if not _same(out, ref_out):
            diff = np.flatnonzero(~np.isclose(_np(out).astype(np.float64).ravel(),
                                              ref_out.astype(np.float64).ravel(), equal_nan=True, rtol=0, atol=0))
            raise FuzzFailure(f"values differ from the reference path at {diff[:5]}: "
                              f"{_np(out).ravel()[diff[:5]]} vs {ref_out.ravel()[diff[:5]]}")
        if keep and not (_params_equal(scale, ref_scale) and _params_equal(zp, ref_zp)):
            raise FuzzFailure(f"parameters differ from the reference path: {scale} {zp} vs {ref_scale} {ref_zp}")
    if _moderate(case):
        # codes held in float16 round up to inf from 65520 (16-bit asym): SPEC deviation 1
        codes_overflow = keep and info["dtype"] == "float16" and not isinstance(_code_range(case), set) \
            and _code_range(case)[1] >= 65520
        outputs = (("scale", scale), ("zp", zp)) + ((("weight", out),) if not codes_overflow else ())
        bad = [name for name, p in outputs
               if p is not None and not isinstance(p, tuple) and not bool(np.all(np.isfinite(_np(p).astype(np.float64))))]
        if bad and not _degenerate_given_scale(case):
            raise FuzzFailure(f"non-finite {bad} from finite, moderate input")
    return "ok"


def _moderate(case):
    """Finite values and clip ratios far from the compute dtype's limits: the scales can
    neither overflow nor underflow, so every result must be finite."""
    q = case["args"].get("quantile", 1.0)
    q_min = float(np.min(q)) if isinstance(q, np.ndarray) and q.size else (float(q) if not isinstance(q, np.ndarray)
                                                                             else 1.0)
    if case["func"] == "quant_weight_w_scale" and case["args"].get("bits") is None:
        return False  # unclamped codes: w / scale may exceed the weight's dtype
    values = case["values"]
    if case["info"]["dtype"] == "float16" and values.size and float(np.max(np.abs(values))) > 3e4:
        return False  # asym values dequantize up to the group's range, twice float16's largest
    return not _extreme(case["values"]) and not non_finite(case["values"]) and q_min >= 1e-6


def _degenerate_given_scale(case):
    """A given scale (or zero point) that is zero or not finite makes non-finite codes."""
    for key in ("scale", "zp"):
        s = case["args"].get(key, case["kwargs"].get(key))
        if isinstance(s, np.ndarray) and s.size and not bool(np.all(np.isfinite(s) & (s != 0) if key == "scale"
                                                                     else np.isfinite(s))):
            return True
    return False


def _validate_clip(case, result):
    from nbwoq.clip import candidates

    a, info = case["args"], case["info"]
    ratios = candidates(a.get("grid"))
    if not a.get("per_group", False):
        if not isinstance(result, float) or result not in ratios:
            raise FuzzFailure(f"search_clip returned {result!r}, not one of the candidates")
        return "ok"
    rows, cols = info["shape"]
    cdt = _compute_dtype(info["dtype"])
    r = _np(result)
    want = (rows, group_layout(cols, int(a.get("group_size", 32)))[1])
    if r.shape != want or r.dtype != cdt:
        raise FuzzFailure(f"per-group ratios have shape {r.shape} dtype {r.dtype}, expected {want} {cdt}")
    if not bool(np.all(np.isin(r, np.asarray(ratios, dtype=cdt)))):
        raise FuzzFailure("per-group ratios that are not candidates")
    return "ok"


def _arrays_of(case):
    items = [("weight", case["weight"])]
    items += [(k, v) for k, v in {**case["args"], **case["kwargs"]}.items() if hasattr(v, "shape")]
    return items


def run_case(case, call, validate, weight_name="weight", torch_face=False):
    """Make the call of ``case`` and judge it. Returns the outcome's name ("ok",
    "refused", "untouched"); raises ``FuzzFailure`` with a description otherwise."""
    info = case["info"]
    case["values"] = _values_of(case["weight"], info)
    expect = expected_errors(case, weight_name, torch_face)
    before = {name: snapshot(v) for name, v in _arrays_of(case)}
    try:
        result = call(case)
    except (ValueError, TypeError) as exc:
        allowed = expect.bad | expect.may_fail
        if not allowed:
            raise FuzzFailure(f"refused a valid call: {type(exc).__name__}: {exc}\n{describe(case)}\n{expect}") from exc
        if not message_names(exc, allowed, weight_name):
            raise FuzzFailure(f"message does not name any of {sorted(allowed)}: {exc!r}\n{describe(case)}") from exc
        for name, v in _arrays_of(case):
            if snapshot(v) != before[name]:
                raise FuzzFailure(f"{name} changed although the call raised {exc!r}\n{describe(case)}") from exc
        case["refused"] = f"{type(exc).__name__}: {exc}"
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__} (only ValueError/TypeError allowed): {exc}\n{describe(case)}") from exc
    if expect.bad:
        raise FuzzFailure(f"accepted a call the SPEC refuses ({sorted(expect.bad)})\n{describe(case)}")
    for name, v in _arrays_of(case)[1:]:
        if snapshot(v) != before[name]:
            raise FuzzFailure(f"argument {name} was modified\n{describe(case)}")
    try:
        return validate(case, result, expect, before["weight"])
    except FuzzFailure as exc:
        raise FuzzFailure(f"{exc}\n{describe(case)}") from None


def _values_of(w, info):
    """The weight's values as float64 (None when its dtype is not a float one)."""
    if info["dtype"] not in VALID_DTYPES:
        return None
    return _np(w).astype(np.float64) if not _is_torch(w) else _torch_values(w)


def _torch_values(t):
    t = _dense(t)
    if t is None:
        return None
    return t.to("cpu", copy=True).double().numpy()


def _dense(t):
    """``t`` detached, as a dense tensor (None on the meta device: no values)."""
    t = t.detach()
    if t.device.type == "meta":
        return None
    return t.to_dense() if t.layout != _torch().strided else t


def call_core(case):
    return getattr(nbwoq, case["func"])(case["weight"], **case["args"], **case["kwargs"])


def check_core_case(case):
    """Run one core case; returns its outcome name."""
    name = "tensor" if case["func"] == "quantize_4bit" else "weight"
    return run_case(case, call_core, validate_core, weight_name=name)


# --------------------------------------------------------------------------- the torch face

TORCH_LAYOUTS = ("contiguous",) * 6 + ("transposed", "cols-strided", "expand", "parameter", "inference", "numpy",
                                      "meta", "sparse")
TORCH_INVALID = ("int8", "int32", "int64", "bool", "complex64", "uint8", "float8_e4m3fn")


def torch_from_numpy(a):
    """A CPU tensor holding exactly the bits of NumPy array ``a`` (bfloat16 included)."""
    torch = _torch()
    a = np.ascontiguousarray(a)
    if BF16 is not None and a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def torch_arrange(t, layout):
    torch = _torch()
    if layout in ("contiguous", "numpy") or t.ndim != 2:
        numpy_ok = t.dtype not in (torch.bfloat16, torch.float8_e4m3fn)
        return t.numpy() if layout == "numpy" and numpy_ok else t
    rows, cols = t.shape
    if layout == "transposed":
        return t.t().contiguous().t()
    if layout == "cols-strided":
        buf = torch.zeros((rows, 2 * cols), dtype=t.dtype)
        buf[:, ::2] = t
        return buf[:, ::2]
    if layout == "expand":
        return t[:1].expand(rows, cols)
    if layout == "parameter":
        return torch.nn.Parameter(t, requires_grad=t.is_floating_point())
    if layout == "inference":
        with torch.inference_mode():
            return t.clone()
    if layout == "meta":
        return t.to("meta")
    if layout == "sparse":
        return t.to_sparse() if t.dtype != torch.float8_e4m3fn else t  # torch cannot make that one
    raise AssertionError(layout)


@st.composite
def torch_weights(draw, allow_invalid=True):
    """``(tensor, info)`` like ``weights``, as torch tensors in torch's layouts."""
    torch = _torch()
    rank = draw(st.sampled_from((2,) * 30 + (0, 1, 3))) if allow_invalid else 2
    rows = draw(st.sampled_from((0, 1, 1, 2, 3, 4, 5, 8)))
    cols = draw(st.sampled_from((0, 1, 1, 2, 3, 5, 7, 8, 16, 17, 33, 64)))
    shape = {0: (), 1: (cols,), 2: (rows, cols), 3: (2, rows, cols)}[rank]
    invalid = allow_invalid and rarely(draw, 20)
    dtype_name = draw(st.sampled_from(TORCH_INVALID if invalid else VALID_DTYPES))
    profile = draw(st.sampled_from(PROFILES))
    seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(TORCH_LAYOUTS))
    values = make_values(seed, shape, profile)
    if dtype_name in VALID_DTYPES:
        t = torch_from_numpy(cast(values, np_dtype(dtype_name)))
    else:
        with np.errstate(all="ignore"):
            t = torch.from_numpy(np.array(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).clip(-100, 100)))
        t = t.to(getattr(torch, dtype_name))
    t = torch_arrange(t, layout)
    return t, dict(shape=shape, dtype=dtype_name, profile=profile, seed=seed, layout=layout)


def _to_torch_args(d, draw):
    """NumPy array arguments become tensors (sometimes left NumPy: the face passes them
    through to the core, which accepts them for CPU weights)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray) and v.dtype != np.float16 and draw(st.booleans()) or (
                isinstance(v, np.ndarray) and v.dtype == np.float16):
            out[k] = _torch().from_numpy(np.array(v))
        else:
            out[k] = v
    return out


@st.composite
def torch_cases(draw, func):
    case = draw(CASES[func](weight_strategy=torch_weights()))
    case["args"] = _to_torch_args(case["args"], draw)
    case["kwargs"] = _to_torch_args(case["kwargs"], draw)
    if func == "quant_weight_w_scale":
        case["kwargs"].pop("check_finite", None)  # not in the torch face's signature
    return case


def torch_weight_problem(w, info, writes):
    """Why the torch face refuses a weight (None when it is acceptable)."""
    torch = _torch()
    if not isinstance(w, torch.Tensor):
        return "type"
    if w.layout != torch.strided or w.device.type == "meta":
        return "layout"
    # the face checks overlapping memory before the core sees the dtype or the rank
    if writes and info["layout"] == "expand" and len(info["shape"]) == 2 and info["shape"][0] > 1 \
            and info["shape"][1] > 0:
        return "overlap"
    if info["dtype"] not in VALID_DTYPES:
        return "dtype"
    if len(info["shape"]) != 2:
        return "rank"
    return None


def call_torch(case):
    import nbwoq_torch

    func = getattr(nbwoq_torch, case["func"])
    if case["func"] == "search_clip":
        return func(_module_with(case["weight"]), **case["args"], **case["kwargs"])
    return func(case["weight"], **case["args"], **case["kwargs"])


def _module_with(w):
    torch = _torch()
    m = torch.nn.Module()
    if isinstance(w, torch.nn.Parameter):
        m.weight = w
    else:
        m.__dict__["weight"] = w  # any tensor, even one a Parameter cannot hold
    return m


def validate_torch(case, result, expect, before):
    """The torch face's result equals the core's on a NumPy copy of the same bits."""
    torch = _torch()
    w, info = case["weight"], case["info"]
    if case["func"] == "search_clip":
        if snapshot(w) != before:
            raise FuzzFailure("search_clip wrote to m.weight")
    core_case = dict(case, weight=case["numpy_copy"], info=dict(info, layout="C"),
                     args={k: _np(v) if _is_torch(v) else v for k, v in case["args"].items()},
                     kwargs={k: _np(v) if _is_torch(v) else v for k, v in case["kwargs"].items()})
    # torch float16 arguments reach the core as float16 NumPy arrays
    for d, src in ((core_case["args"], case["args"]), (core_case["kwargs"], case["kwargs"])):
        for k, v in src.items():
            if _is_torch(v) and v.dtype == torch.float16:
                d[k] = v.numpy()
    if expect.untouched:
        if result is not w or snapshot(w) != before:
            raise FuzzFailure("bits <= 0 must return the tensor untouched")
        return "untouched"
    want = call_core(core_case)
    if case["func"] == "search_clip":
        if isinstance(want, float) or isinstance(result, float):
            if result != want:
                raise FuzzFailure(f"search_clip: {result!r} vs the core's {want!r}")
        elif not _same(result, want):
            raise FuzzFailure("per-group ratios differ from the core's")
        return "ok"
    keep = _keeps_params(case)
    out, scale, zp = _unpack(result, keep)
    wout, wscale, wzp = _unpack(want, keep)
    if out is not w:
        raise FuzzFailure("the tensor passed in must be returned (same object)")
    if expect.untouched:
        if snapshot(w) != before:
            raise FuzzFailure("bits <= 0 must leave the tensor untouched")
        return "untouched"
    if not _same(out, _bits_as_torch_view(wout)):
        raise FuzzFailure("values differ from the core's result on a NumPy copy")
    if keep and not (_params_equal(_tuple_np(scale), _tuple_np(wscale)) and _params_equal(_tuple_np(zp), _tuple_np(wzp))):
        raise FuzzFailure("parameters differ from the core's")
    for p in (scale, zp):
        if _is_torch(p) and p.device != w.device:
            raise FuzzFailure("parameters are not on the weight's device")
    return "ok"


def _tuple_np(x):
    if isinstance(x, tuple):
        return tuple(_np(v) for v in x)
    return _np(x)


def _bits_as_torch_view(a):
    a = np.asarray(a)
    if BF16 is not None and a.dtype == BF16:
        return a.astype(np.float32)
    return a


def _numpy_copy(t):
    t = t.detach().contiguous()
    if t.dtype == _torch().bfloat16:
        return t.view(_torch().int16).numpy().copy().view(BF16)
    return t.numpy().copy()


def check_torch_reference_case(case):
    """Like ``check_torch_case`` with CPU tensors on the array-API reference path (what
    CUDA tensors take): its results must equal the kernels' on a NumPy copy, half
    precision included (``array_api_strict`` has no half types; torch has)."""
    from nbwoq_torch._interop import reference_path

    def call(case):
        with reference_path():
            return call_torch(case)

    case["reference_path"] = True
    return check_torch_case(case, call)


def check_torch_case(case, call=None):
    """Run one case through ``nbwoq_torch``; returns its outcome name."""
    name = "tensor" if case["func"] == "quantize_4bit" else ("m.weight" if case["func"] == "search_clip" else "weight")
    w = case["weight"]
    # the same bits as NumPy, taken before the call overwrites them: the oracle's input
    case["numpy_copy"] = _numpy_copy(w) if torch_weight_problem(w, case["info"], False) is None else None
    return run_case(case, call or call_torch, validate_torch, weight_name=name, torch_face=True)


TORCH_CASES = {func: (lambda f: (lambda: torch_cases(f)))(func) for func in CASES}


# --------------------------------------------------------------------------- load / dequantize

LOAD_CONFIGS = {
    "int4-asym-g16": dict(bits=4, group_size=16),
    "int8-sym-full": dict(bits=8, group_size=-1, scheme="sym", full_range=True),
    "nf4-g32": dict(dtype="nf4", group_size=32),
    "int16-asym-g64": dict(bits=16, group_size=64),
    "int2-sym-g7": dict(bits=2, group_size=7, scheme="sym"),
}
META_VALUES = {
    "shape": ([0, 0], [4], [400, 640], [4, 63], [4, 65], "x", None, [-1, 64], [4.5, 64], [3, 64]),
    "bits": (0, 17, 3, "4", None, True, 8),
    "slot": (0, 1, 2, 3, 8, 16, 32),
    "group_size": (0, -2, 1, 64, 65, "16", None),
    "qmin": (-8, 0, -100, 1.5, -128),
    "codebook": ("nf4", "int", "zz", None, "fp4"),
    "scheme": ("sym", "asym", "x"),
    "full_range": (True, "no", None),
}
_load_files = {}


def _load_base(name):
    """A small nbwoq-format file of configuration ``name`` (made once per process)."""
    if name not in _load_files:
        folder = tempfile.mkdtemp(prefix="nbwoq-fuzz-load-")
        w = np.random.default_rng(7).standard_normal((4, 64)).astype(np.float32)
        path = f"{folder}/{name}.safetensors"
        nbwoq.save({"layers.0.fc.weight": w, "layers.0.g.weight": w[:3, :33].copy()}, path,
                        **LOAD_CONFIGS[name])
        with open(path, "rb") as f:
            _load_files[name] = f.read()
    return _load_files[name]


def _rewrite_meta(raw, edit):
    """``raw`` (a safetensors file) with its nbwoq.tensors metadata passed through ``edit``."""
    import json
    import struct

    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header["__metadata__"]
    try:
        meta["nbwoq.tensors"] = edit(meta["nbwoq.tensors"])
    except ValueError:  # an earlier edit left text that is not JSON
        meta["nbwoq.tensors"] = edit("{}")
    body = json.dumps(header).encode()
    body += b" " * (-(8 + len(body)) % 8)
    return struct.pack("<Q", len(body)) + body + raw[8 + n:]


@st.composite
def load_cases(draw):
    """``(base name, mutated file bytes, description)``."""
    import json

    base = draw(st.sampled_from(sorted(LOAD_CONFIGS)))
    raw = _load_base(base)
    steps = []
    # metadata edits first (they need an intact header), then raw damage
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("meta-field", "meta-field", "meta-drop", "meta-json")))
        if kind in ("meta-field", "meta-drop"):
            field = draw(st.sampled_from(sorted(META_VALUES)))
            tensor = draw(st.sampled_from(("layers.0.fc.weight", "layers.0.g.weight")))
            value = draw(st.sampled_from(META_VALUES[field]))

            def edit(text, field=field, tensor=tensor, value=value, drop=kind == "meta-drop"):
                m = json.loads(text)
                if not isinstance(m, dict) or not isinstance(m.get(tensor), dict):
                    return text
                if drop:
                    m[tensor].pop(field, None)
                else:
                    m[tensor][field] = value
                return json.dumps(m)

            raw = _rewrite_meta(raw, edit)
            steps.append(f"{kind} {tensor}.{field}={value!r}")
        else:
            text = draw(st.sampled_from(("[]", "{", '{"x": 1}', '{"layers.0.fc.weight": []}', "null")))
            raw = _rewrite_meta(raw, lambda _, text=text: text)
            steps.append(f"meta-json {text}")
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(("flip-byte", "flip-byte", "truncate", "append")))
        if kind == "flip-byte" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
            steps.append(f"flip byte {i}")
        elif kind == "truncate":
            i = draw(st.integers(0, len(raw)))
            raw = raw[:i]
            steps.append(f"truncate at {i}")
        elif kind == "append":
            raw = raw + b"\0" * draw(st.integers(1, 64))
            steps.append("append zeros")
    return base, raw, steps


def check_load_case(case):
    """``load`` then ``dequantize`` a (possibly corrupt) file: a result whose arrays have the
    recorded shapes, or ValueError/TypeError. Returns the outcome name."""
    base, raw, steps = case
    folder = tempfile.mkdtemp(prefix="nbwoq-fuzz-load-")
    path = f"{folder}/m.safetensors"
    with open(path, "wb") as f:
        f.write(raw)
    try:
        loaded = nbwoq.load(path)
        out = nbwoq.dequantize(loaded)
    except (ValueError, TypeError):
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__} (only ValueError/TypeError allowed): {exc}\n{base}: {steps}") from exc
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    for name, q in loaded.items():
        if isinstance(q, nbwoq.QuantizedTensor) and out[name].shape != q.shape:
            raise FuzzFailure(f"dequantized {name} has shape {out[name].shape}, recorded {q.shape}\n{base}: {steps}")
    return "ok"


# --------------------------------------------------------------------------- module utilities

NAME_PARTS = ("layers", "0", "1", "2", "-1", "fc", "sq_linear", "orig_layer", "weight", "bias", "", "mlp", "norm",
              "__class__", "training", "01", " fc", "layers.0")


@st.composite
def dotted_names(draw):
    """``(function, name)``: a lookup and a dotted name, real or not."""
    func = draw(st.sampled_from(("get_module", "fetch_module", "set_module")))
    parts = draw(st.lists(st.sampled_from(NAME_PARTS), min_size=0, max_size=4))
    name = ".".join(parts) if draw(st.integers(0, 9)) else draw(st.sampled_from((None, 3, b"fc", ["fc"])))
    return func, name


def lookup_model():
    """Layers in a ModuleList, one wrapped the PEFT way (the real layer in ``sq_linear``)."""
    torch = _torch()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.sq_linear = inner

    class Block(torch.nn.Module):
        def __init__(self, wrap):
            super().__init__()
            self.fc = Wrapper(torch.nn.Linear(4, 4)) if wrap else torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block(False), Block(True)])
    return model


def _state(model):
    return [(k, id(v)) for k, v in model.named_modules()], {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_lookup(case):
    """A lookup returns what the dotted name names, or raises AttributeError naming the
    missing part (SPEC deviation 5), TypeError/ValueError for a malformed name; a failed
    ``set_module`` changes nothing."""
    import nbwoq_torch

    torch = _torch()
    func, name = case
    model = lookup_model()
    modules_before, params_before = _state(model)
    classes_before = {cls: set(vars(cls)) for cls in (torch.nn.Module, torch.nn.ModuleList, type(model))}
    replacement = torch.nn.Identity()
    try:
        if func == "set_module":
            nbwoq_torch.set_module(model, name, replacement)
        else:
            result = getattr(nbwoq_torch, func)(model, name)
    except AttributeError as exc:
        parts = name.split(".") if isinstance(name, str) else []
        if not any(repr(p) in str(exc) for p in parts):
            raise FuzzFailure(f"{func}({name!r}): AttributeError names no part of the name: {exc}") from exc
    except (TypeError, ValueError) as exc:
        if not str(exc):
            raise FuzzFailure(f"{func}({name!r}): {type(exc).__name__} without a message") from exc
    except Exception as exc:
        raise FuzzFailure(f"{func}({name!r}): {type(exc).__name__}: {exc}") from exc
    else:
        if any(set(vars(cls)) != names for cls, names in classes_before.items()):
            raise FuzzFailure(f"{func}({name!r}) changed a class (every module of the process)")
        if func == "set_module":
            # a dunder part ("__class__") is registered as a submodule that attribute lookup
            # never reaches (Python finds the type's attribute first): noted, not judged here
            if "__" not in name and nbwoq_torch.get_module(model, name) is not replacement:
                raise FuzzFailure(f"set_module({name!r}) did not put the module where get_module finds it")
        elif func == "get_module" and isinstance(name, str) and name and "sq_linear" not in name \
                and "orig_layer" not in name:
            want = model
            for part in name.split("."):
                want = getattr(want, part) if hasattr(want, part) else getattr(want.sq_linear, part)
            if result is not want:
                raise FuzzFailure(f"get_module({name!r}) returned {result!r}, not {want!r}")
        return "ok"
    after = _state(model)
    if after[0] != modules_before or any(not torch.equal(after[1][k], v) for k, v in params_before.items()):
        raise FuzzFailure(f"{func}({name!r}) failed but changed the model")
    return "refused"


def _leaf():
    return st.one_of(st.integers(), st.text(max_size=3), st.none(),
                     st.integers(0, 3).map(lambda n: _torch().arange(n, dtype=_torch().float32)))


def nested_inputs():
    return st.recursive(_leaf(), lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=2), inner, max_size=3)), max_leaves=8)


def _same_structure(a, b):
    torch = _torch()
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b.to(a.device))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    return a == b


def check_move_input(value, device):
    """Same structure on the device, or TypeError/ValueError/RuntimeError from torch for a
    device that does not exist (torch's own errors for ``.to``)."""
    import nbwoq_torch

    torch = _torch()
    try:
        moved = nbwoq_torch.move_input_to_device(value, device)
    except (TypeError, ValueError, RuntimeError) as exc:
        if device in ("cpu", torch.device("cpu"), "meta"):
            raise FuzzFailure(f"move_input_to_device(..., {device!r}) raised {exc!r}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__}: {exc}") from exc
    if device in ("cpu", torch.device("cpu")) and not _same_structure(value, moved):
        raise FuzzFailure("move_input_to_device changed the structure or the values")
    return "ok"


def batches():
    torch = _torch()
    t = st.integers(0, 3).map(lambda n: torch.full((2,), float(n)))
    return st.one_of(t, st.tuples(t, t), st.lists(t, min_size=2, max_size=2), st.tuples(t, t, t),
                     st.dictionaries(st.sampled_from(("ids", "mask")), t, min_size=1))


def check_example_input(loader, i):
    import nbwoq_torch

    try:
        got = nbwoq_torch.get_example_input(loader, i)
    except ValueError as exc:
        if not (isinstance(i, bool) or not isinstance(i, int) or i < 0):
            raise FuzzFailure(f"get_example_input refused i={i!r}: {exc}") from exc
        if "i must" not in str(exc):
            raise FuzzFailure(f"message does not name i: {exc}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__}: {exc}") from exc
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise FuzzFailure(f"accepted i={i!r}")
    if not loader:
        if got is not None:
            raise FuzzFailure("an empty loader must give None")
        return "ok"
    batch = loader[min(i, len(loader) - 1)]
    want = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    if not _same_structure(want, got):
        raise FuzzFailure(f"get_example_input({i}) returned the wrong batch's input")
    return "ok"


LAYER_POOL = ("Linear", "Linear", "ReLU", "LayerNorm", "GELU", "Identity", "Dropout")


def _layer(kind):
    nn = _torch().nn
    return {"Linear": lambda: nn.Linear(8, 8), "ReLU": nn.ReLU, "LayerNorm": lambda: nn.LayerNorm(8), "GELU": nn.GELU,
            "Identity": nn.Identity, "Dropout": nn.Dropout}[kind]()


@st.composite
def absorb_cases(draw):
    """``(layer kinds, supported_layers, backend)`` for ``get_absorb_layers``."""
    kinds = draw(st.lists(st.sampled_from(LAYER_POOL), min_size=1, max_size=6))
    supported = draw(mostly(st.lists(st.sampled_from(("Linear", "LayerNorm", "Conv2d", "Conv1D", "Bogus")),
                                     min_size=1, max_size=3),
                            st.sampled_from(("Linear", None, [1], ("Linear",), []))))
    backend = draw(mostly(st.sampled_from(("auto", "torchscript", "auto")), st.sampled_from(("export", "bogus", None))))
    return kinds, supported, backend


def check_absorb(case):
    """``({absorber: [layers]}, [layers])`` naming modules of the model, or TypeError /
    ValueError for a bad ``supported_layers`` or ``backend``."""
    import logging

    import nbwoq_torch

    torch = _torch()
    kinds, supported, backend = case
    model = torch.nn.Sequential(*[_layer(k) for k in kinds]).eval()
    names = {name for name, _ in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Quiet the expected trace warnings for this call only: a level left behind would
    # hide them from later tests that assert on them (caplog).
    graph_logger = logging.getLogger("nbwoq_torch")
    level = graph_logger.level
    graph_logger.setLevel(logging.ERROR)
    try:
        absorb, lonely = nbwoq_torch.get_absorb_layers(model, torch.randn(2, 8), supported_layers=supported,
                                                       backend=backend)
    except (TypeError, ValueError) as exc:
        if not ("supported_layers" in str(exc) or "backend" in str(exc)):
            raise FuzzFailure(f"get_absorb_layers{case}: message names neither argument: {exc}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"get_absorb_layers{case}: {type(exc).__name__}: {exc}") from exc
    finally:
        graph_logger.setLevel(level)
    if not isinstance(absorb, dict) or not isinstance(lonely, list):
        raise FuzzFailure(f"get_absorb_layers{case} returned {type(absorb).__name__}, {type(lonely).__name__}")
    mentioned = set(absorb) | {n for v in absorb.values() for n in v} | set(lonely)
    if not mentioned <= names:
        raise FuzzFailure(f"get_absorb_layers{case} names modules that do not exist: {mentioned - names}")
    if any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()):
        raise FuzzFailure(f"get_absorb_layers{case} changed the model's weights")
    return "ok"


@st.composite
def hook_cases(draw):
    """``(module_hook_config, iters, n_batches)`` for ``get_module_input_output``."""
    names = st.sampled_from(("0", "1", "2", "3", "9", "", "0.weight", "a.b"))
    kinds = mostly(st.lists(st.sampled_from(("input", "output")), min_size=0, max_size=2),
                   st.sampled_from(("output", ["inputs"], 3, None)))
    config = draw(mostly(st.dictionaries(names, kinds, max_size=3), st.sampled_from(([], None, {3: ["input"]}))))
    iters = draw(mostly(st.integers(1, 4) | st.just(-1), st.sampled_from((0, -2, 1.0, None, True))))
    return config, iters, draw(st.integers(0, 4))


def check_hooks(case):
    """A record per configured module, or TypeError/ValueError/AttributeError (a missing
    module, SPEC deviation 5); either way no hook is left on the model."""
    import nbwoq_torch

    torch = _torch()
    config, iters, n_batches = case
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.ReLU())
    loader = [(torch.randn(3, 4), torch.zeros(3)) for _ in range(n_batches)]
    try:
        record = nbwoq_torch.get_module_input_output(model, config, dataloader=loader, iters=iters)
    except (TypeError, ValueError, AttributeError) as exc:
        outcome = "refused"
        if not str(exc):
            raise FuzzFailure(f"get_module_input_output{case}: {type(exc).__name__} without a message") from exc
    except Exception as exc:
        raise FuzzFailure(f"get_module_input_output{case}: {type(exc).__name__}: {exc}") from exc
    else:
        outcome = "ok"
        if set(record) != set(config):
            raise FuzzFailure(f"get_module_input_output{case}: recorded {sorted(record)} for {sorted(config)}")
        runs = n_batches if iters == -1 else min(iters, n_batches)
        for name, kinds in config.items():
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            for kind in kinds:
                if len(record[name][kind]) != runs:
                    raise FuzzFailure(f"get_module_input_output{case}: {len(record[name][kind])} {kind}s of "
                                      f"{name!r} for {runs} batches")
    left = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if left:
        raise FuzzFailure(f"get_module_input_output{case} left hooks on {left}")
    return outcome


# --------------------------------------------------------------------------- the CLI

_cli_source = {}


def cli_source():
    """A tiny generated checkpoint (made once per process)."""
    if "path" not in _cli_source:
        from nbwoq.command.demo_model import write_checkpoint

        _cli_source["path"] = write_checkpoint(
            tempfile.mkdtemp(prefix="nbwoq-fuzz-cli-"), hidden_size=64, intermediate_size=96, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=64, shard_bytes=30_000)
    return _cli_source["path"]


@st.composite
def cli_cases(draw):
    """Command lines for ``nbwoq quantize`` (the output path is added by the checker)."""
    options = {
        "--bits": mostly(st.sampled_from(("2", "3", "4", "8", "16")), st.sampled_from(("0", "17", "-1", "x", "4.5"))),
        "--group-size": mostly(st.sampled_from(("-1", "1", "7", "32", "64", "128", "300")),
                               st.sampled_from(("0", "-2", "x"))),
        "--scheme": mostly(st.sampled_from(("sym", "asym")), st.just("SYM")),
        "--dtype": mostly(st.sampled_from(DTYPES), st.just("nf8")),
        "--clip": mostly(st.sampled_from(("none", "tensor", "group")), st.just("all")),
        "--format": mostly(st.sampled_from(("nbwoq", "nbwoq", "gptq", "gguf")), st.just("onnx")),
        "--include": st.sampled_from(("*.weight", "*q_proj*", "nothing*", "model.embed_tokens.weight")),
        "--exclude": st.sampled_from(("*down_proj*", "*")),
        "--threads": mostly(st.sampled_from(("1", "2")), st.sampled_from(("0", "999", "x"))),
        "--top": mostly(st.sampled_from(("0", "3")), st.just("-1")),
    }
    argv = ["quantize", cli_source()]
    for flag in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=5)):
        argv += [flag, draw(options[flag])]
    for flag in draw(st.lists(st.sampled_from(("--full-range", "--overwrite", "--resume")), unique=True, max_size=2)):
        argv.append(flag)
    return argv + ["--quiet"]


def check_cli(argv):
    """Exit 0 with a complete output, 1 with one ``nbwoq: error:`` line and no output, or
    argparse's exit 2 for bad usage; never a traceback."""
    import contextlib
    import io
    import shutil

    from nbwoq.command.cli import main

    folder = tempfile.mkdtemp(prefix="nbwoq-fuzz-cli-out-")
    fmt = argv[argv.index("--format") + 1] if "--format" in argv else "nbwoq"
    out = f"{folder}/out" + (".gguf" if fmt == "gguf" else "")
    err, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            try:
                code = main(argv[:2] + [out] + argv[2:])
            except SystemExit as exc:  # argparse: bad usage
                code = exc.code
        if code == 0:
            if not os.path.exists(out) or os.path.exists(out + ".partial"):
                raise FuzzFailure(f"exit 0 without a finished output: {argv}")
            if fmt == "nbwoq":
                nbwoq.dequantize(nbwoq.load(out))
            return "ok"
        if code == 1:
            lines = err.getvalue().strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("nbwoq: error: "):
                raise FuzzFailure(f"exit 1 without one error line: {argv}: {lines}")
            if os.path.exists(out):
                raise FuzzFailure(f"exit 1 but the output exists: {argv}")
            return "refused"
        if code == 2:
            return "usage"
        raise FuzzFailure(f"exit status {code!r}: {argv}\n{err.getvalue()[-1500:]}")
    except FuzzFailure:
        raise
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__}: {exc}: {argv}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
