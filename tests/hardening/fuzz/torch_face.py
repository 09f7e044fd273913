"""The torch face: the core's cases as tensors of every layout, judged against the core's
result on a NumPy copy of the same bits (and on the array-API reference path)."""

import numpy as np
from hypothesis import assume, strategies as st

from .core import FuzzFailure, _keeps_params, _params_equal, _same, _unpack, call_core, run_case
from .expected import torch_weight_problem
from .strategies import CASES, rarely
from .values import BF16, PROFILES, VALID_DTYPES, _is_torch, _np, _torch, cast, make_values, np_dtype, snapshot


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


def _broadcasts_like_reference(case):
    """Whether the torch face gives this ``quant_weight_w_scale`` call the reference's
    broadcasting of a scale or zero point that is not ``(rows, n_groups)`` (on purpose, with
    a warning; the core refuses those shapes, so the core is no oracle for them:
    ``tests/torch/test_reference_calls.py`` checks them against torch's own arithmetic).
    The shim's decision must itself never raise."""
    if case["func"] != "quant_weight_w_scale":
        return False
    import warnings

    from nbwoq_torch._reference_calls import broadcast_like_reference

    a = case["args"]
    scale, zp, gs = a.get("scale"), a.get("zp"), a.get("group_size", -1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = broadcast_like_reference(case["weight"], scale, zp, gs)
    except Exception as exc:
        raise FuzzFailure(f"deciding the reference's broadcasting raised {exc!r}") from exc
    return got[0] is not scale or got[1] is not zp or got[2] != gs


def check_torch_case(case, call=None):
    """Run one case through ``nbwoq_torch``; returns its outcome name."""
    assume(not _broadcasts_like_reference(case))
    name = "tensor" if case["func"] == "quantize_4bit" else ("m.weight" if case["func"] == "search_clip" else "weight")
    w = case["weight"]
    # the same bits as NumPy, taken before the call overwrites them: the oracle's input
    case["numpy_copy"] = _numpy_copy(w) if torch_weight_problem(w, case["info"], False) is None else None
    return run_case(case, call or call_torch, validate_torch, weight_name=name, torch_face=True)


TORCH_CASES = {func: (lambda f: (lambda: torch_cases(f)))(func) for func in CASES}
