"""The SPEC's refusals: which arguments of a case must be refused, one rule per function.

``expected_errors`` looks the function up in ``RULES`` (a table: function name -> rule);
a rule reads the case's arguments and fills an ``Expectation``.
"""

import numpy as np

from nbwoq._tables import DTYPES, FLOAT_MAPPING, SCHEMES

from .strategies import _layout_of
from .values import VALID_DTYPES, _is_torch, _np, _torch


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
        if q.shape != (shape[0], n_groups) or q.dtype not in (np.float16, np.float32, np.float64):
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


class Call:
    """One case as the rules read it: its arguments (tensors as NumPy views of the same
    memory, as the torch face hands them to the core), the weight's problem, and the
    ``Expectation`` being filled."""

    def __init__(self, case, weight_name, torch_face):
        self.case, self.weight_name, self.torch_face = case, weight_name, torch_face
        self.func, self.info, self.shape = case["func"], case["info"], case["info"]["shape"]
        # tensors the torch face gets reach the core as NumPy views of the same memory
        self.a = {k: _np(v) if _is_torch(v) else v for k, v in case["args"].items()}
        self.kw = {k: _np(v) if _is_torch(v) else v for k, v in case["kwargs"].items()}
        # On the reference path parameter arrays must be of the weight's namespace (torch):
        # NumPy ones, which the kernel path takes, are refused there.
        self.foreign = {k for k, v in {**case["args"], **case["kwargs"]}.items()
                        if case.get("reference_path") and isinstance(v, np.ndarray)}
        self.e = Expectation()
        self.bad = self.e.bad
        self.wp = self.weight_problem(writes=self.func != "search_clip")
        if torch_face and self.wp in ("type", "layout", "overlap"):
            self.bad.add(weight_name)  # the face checks these before handing anything to the core
        self.values = case.get("values")
        self.finite_check = self.kw.get("check_finite", self.a.get("check_finite", True))

    def weight_problem(self, writes):
        return (torch_weight_problem if self.torch_face else weight_problem)(self.case["weight"], self.info, writes)

    def need_weight(self):
        if self.wp is not None:
            self.bad.add(self.weight_name)

    def check_values(self):
        if self.wp is None and self.finite_check is True and self.values is not None and non_finite(self.values):
            self.bad.add(self.weight_name)

    def flag(self, name, value, default=False):
        if not _is_flag(self.a.get(name, self.kw.get(name, default))):
            self.bad.add(name)

    def quantile_then_values(self, n_groups):
        """The quantizing functions' last checks: ``quantile`` for ``n_groups``, then the
        weight's values."""
        if _quantile_bad(self.a.get("quantile", 1.0), self.shape, n_groups) or "quantile" in self.foreign:
            self.bad.add("quantile")
        else:
            self.check_values()

    def n_groups_of(self, gs):
        return _layout_of(self.shape, gs) if len(self.shape) == 2 else 1


def _quant_tensor(c):
    a, kw, bad, e, shape, foreign = c.a, c.kw, c.bad, c.e, c.shape, c.foreign
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
        return
    codebook = dtype in FLOAT_MAPPING
    if not codebook and (kw.get("scale") is not None or kw.get("cast_int", False)):
        bad.update({"scale", "cast_int"} & set(kw))
        return
    if kw.get("double_quant") and kw.get("scale") is not None:
        bad.update({"double_quant", "scale"})
        return
    return_int = a.get("return_int", False)
    if kw.get("double_quant_return_int") and kw.get("double_quant") and return_int is not True \
            and not (isinstance(return_int, np.bool_) and return_int):
        bad.update({"double_quant_return_int", "return_int"})
        return
    if bits <= 0:
        if c.weight_problem(writes=False) is not None:
            bad.add(c.weight_name)
        e.untouched = True
        return
    c.need_weight()
    c.flag("return_int", return_int)
    c.flag("full_range", a.get("full_range", False))
    if bad:
        return
    if not codebook and scheme == "sym" and a.get("full_range", False) and bits == 1:
        bad.add("full_range")
        return
    n_groups = c.n_groups_of(gs)
    if kw.get("scale") is not None and not kw.get("double_quant"):
        s = kw["scale"]
        if not isinstance(s, np.ndarray) or s.shape != (shape[0], n_groups) or "scale" in foreign:
            bad.add("scale")
            return
    c.quantile_then_values(n_groups)


def _rowwise(c):
    """quantize_4bit and the qdq_weight_* functions: one group per row."""
    func, a, kw, bad, shape, foreign = c.func, c.a, c.kw, c.bad, c.shape, c.foreign
    accepted = {"check_finite", "double_quant"}
    codebook = False
    if func == "qdq_weight_actor":
        bits = a.get("bits")
        if not _is_int(bits) or bits > 16 or bits <= 0:
            bad.add("bits")
            return
        if a.get("scheme") not in SCHEMES:
            bad.add("scheme")
            return
        dtype = a.get("dtype", "int")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            bad.add("dtype")
            return
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
        return
    if func == "quantize_4bit":
        dtype = a.get("dtype", "nf4")
        if not isinstance(dtype, str) or dtype not in FLOAT_MAPPING:
            bad.add("dtype")
            return
    if func in ("qdq_weight_asym", "qdq_weight_sym"):
        bits = a.get("bits", 4)
        if not _is_int(bits) or bits > 16 or bits <= 0:
            bad.add("bits")
            return
    c.need_weight()
    c.flag("return_int", a.get("return_int", False))
    if "full_range" in a and (codebook or func != "qdq_weight_asym"):
        c.flag("full_range", a["full_range"])
    if bad:
        return
    sym = func == "qdq_weight_sym" or (func == "qdq_weight_actor" and a.get("scheme") == "sym")
    if not codebook and sym and a.get("full_range", False) and a.get("bits", 4) == 1:
        bad.add("full_range")
        return
    n_groups = 1 if shape[1] else 0
    if kw.get("scale") is not None:
        s = kw["scale"]
        if not isinstance(s, np.ndarray) or s.shape != (shape[0], n_groups) or s.dtype.kind != "f" \
                or "scale" in foreign:
            bad.add("scale")
            return
    c.quantile_then_values(n_groups)


def _quant_weight_w_scale(c):
    a, kw, bad, shape, foreign = c.a, c.kw, c.bad, c.shape, c.foreign
    c.need_weight()
    gs = a.get("group_size", -1)
    if not _is_int(gs) or gs == 0 or gs < -1:
        bad.add("group_size")
    dtype = a.get("dtype", "int")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        bad.add("dtype")
    c.flag("check_finite", kw.get("check_finite", True))
    if bad:
        return
    n_groups = c.n_groups_of(gs)
    s = a["scale"]
    if not isinstance(s, np.ndarray) or s.dtype.kind != "f" or s.shape != (shape[0], n_groups) \
            or "scale" in foreign:
        bad.add("scale")
        return
    zp = a.get("zp")
    if zp is not None:
        if dtype in FLOAT_MAPPING or not isinstance(zp, np.ndarray) or zp.dtype.kind not in "fiu" \
                or zp.shape != (shape[0], n_groups) or "zp" in foreign:
            bad.add("zp")
            return
    bits = a.get("bits")
    if bits is not None and (not _is_int(bits) or bits > 16 or bits <= 0):
        bad.add("bits")
        return
    c.check_values()


def _search_clip(c):
    a, bad, e, values, info, weight_name = c.a, c.bad, c.e, c.values, c.info, c.weight_name
    c.need_weight()
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
    c.flag("enable_full_range", a.get("enable_full_range", False))
    c.flag("per_group", a.get("per_group", False))
    grid = a.get("grid")
    if grid is not None and not _grid_ok(grid):
        bad.add("grid")
    if bad:
        return
    if dtype == "int" and a.get("scheme", "asym") == "sym" and a.get("enable_full_range", False) and bits == 1:
        bad.add("enable_full_range")
        return
    if bits <= 0:
        return
    if values is not None and non_finite(values):
        bad.add(weight_name)
        return
    if values is not None and (_extreme(values) or _too_large_for_squares(values, info)):
        e.may_fail.add(weight_name)  # scales that over- or underflow: no finite error to compare


#: function name -> the rule that fills its ``Expectation``.
RULES = {
    "quant_tensor": _quant_tensor,
    "quantize_4bit": _rowwise,
    "qdq_weight_asym": _rowwise,
    "qdq_weight_sym": _rowwise,
    "qdq_weight_actor": _rowwise,
    "quant_weight_w_scale": _quant_weight_w_scale,
    "search_clip": _search_clip,
}


def expected_errors(case, weight_name="weight", torch_face=False):
    """The SPEC's refusals for ``case`` (see ``Expectation``)."""
    if case["func"] not in RULES:
        raise AssertionError(case["func"])
    call = Call(case, weight_name, torch_face)
    RULES[case["func"]](call)
    return call.e


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
