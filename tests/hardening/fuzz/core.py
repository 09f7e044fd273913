"""Checking a core case: make the call and judge it against the SPEC (see the package
notes), comparing values with the array-API reference twin under ``array_api_strict``.
"""

import numpy as np

import nbwoq
from nbwoq._layout import group_layout
from nbwoq._tables import FLOAT_MAPPING, INT_MAPPING

from .expected import _extreme, expected_errors, non_finite
from .values import _np, _values_of, array_api_strict, np_dtype, snapshot


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


def call_core(case):
    return getattr(nbwoq, case["func"])(case["weight"], **case["args"], **case["kwargs"])


def check_core_case(case):
    """Run one core case; returns its outcome name."""
    name = "tensor" if case["func"] == "quantize_4bit" else "weight"
    return run_case(case, call_core, validate_core, weight_name=name)
