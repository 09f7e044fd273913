"""Loader for the golden vectors recorded with the reference library (tests/golden/).

Every case is exposed as a small record with NumPy arrays; bfloat16 inputs are stored
as float32 holding the same values and come back as ``ml_dtypes.bfloat16`` here.
"""

import functools
import json
import pathlib

import numpy as np

GOLDEN = pathlib.Path(__file__).parent / "golden"


@functools.lru_cache(maxsize=None)
def manifest():
    with open(GOLDEN / "MANIFEST.json") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def _npz(fname):
    with np.load(GOLDEN / fname) as d:
        return {k: d[k] for k in d.files}


def array(fname, ref):
    """The array a manifest reference names, in the dtype the reference held it."""
    if ref is None:
        return None
    a = _npz(fname)[ref["key"]].copy()
    if ref.get("torch_dtype") == "bfloat16":
        import ml_dtypes

        a = a.astype(ml_dtypes.bfloat16)
    return a


def cases(fname, predicate=lambda case: True):
    """Cases of one golden file that satisfy ``predicate``, for ``pytest.mark.parametrize``."""
    return [c for c in manifest()["files"][fname]["cases"] if predicate(c)]


def case_id(case):
    a = case["args"]
    parts = [case["id"], case["function"]]
    for key in ("dtype", "scheme", "bits", "group_size", "quantile"):
        if key in a:
            parts.append(f"{key[:2]}{a[key]}")
    if a.get("full_range"):
        parts.append("fr")
    if a.get("return_int"):
        parts.append("int")
    return "-".join(str(p) for p in parts)


def returned(fname, case):
    """``(weight_after, scale, zp)`` or ``(weight_after,)`` as the reference returned them."""
    ret = case["returned"]
    if ret["type"] == "tensor":
        return (array(fname, ret["value"]),)
    if ret["type"] == "tuple":
        return tuple(array(fname, item) for item in ret["items"])
    raise ValueError(f"unexpected returned type {ret['type']!r}")


def constant(name):
    return manifest()["constants"][name]["values"]


def inputs(fname, case):
    """Fresh copies of the case's tensor arguments, by name (None stays None)."""
    return {name: array(fname, ref) for name, ref in case["tensor_args"].items()}


def invoke(func, fname, case, convert=lambda a: a):
    """Call ``func`` as the reference was called in ``case``; tensors go through ``convert``.

    Returns ``(result, tensors)``: the raw result and the converted tensor arguments
    (so callers can check identity and in-place effects).
    """
    tensors = {k: (None if v is None else convert(v)) for k, v in inputs(fname, case).items()}
    args = dict(case["args"])
    order = case.get("positional_order")
    positional = []
    if order:
        for name in order:
            positional.append(tensors.pop(name) if name in tensors else args.pop(name))
    kwargs = {**tensors, **args}
    return func(*positional, **kwargs), tensors


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def half_pair(fname, case):
    """The float32 twin of a native-half case (same values, cast to float32)."""
    twin_id = case["paired_float32_case"]
    for c in manifest()["files"][fname]["cases"]:
        if c["id"] == twin_id:
            return c
    raise KeyError(twin_id)


def check_half_native(fname, case, func):
    """SPEC deviation 1 for a native float16/bfloat16 golden case: the result equals the
    float32 twin's golden result cast to the half dtype, scales and zero points come back
    float32, and a weight that overflowed to Inf is refused (deviation 4).

    Returns ``(result, native)``: nbwoq's first result as float32 and the native-half
    golden one as float32 (for the difference report), or ``None`` when refused.
    """
    import pytest

    twin = half_pair(fname, case)
    weight = inputs(fname, case)["weight"]
    if not np.all(np.isfinite(weight.astype(np.float32))):
        # +-3e38 overflows float16 to Inf: SPEC deviation 4 refuses non-finite weights.
        with pytest.raises(ValueError, match="non-finite"):
            invoke(func, fname, case)
        return None
    result, tensors = invoke(func, fname, case)
    got = as_tuple(result)
    assert got[0] is tensors["weight"]
    assert_rounded_once(got, returned(fname, twin), tensors["weight"].dtype)
    return got[0].astype(np.float32), returned(fname, case)[0].astype(np.float32)


def assert_rounded_once(got, expected, half_dtype):
    """SPEC deviation 1 on returned tuples: ``got`` (from a half weight) holds the float32
    results ``expected`` with the weight rounded once to ``half_dtype``, and the float32
    scales and zero points unchanged."""
    assert len(got) == len(expected)
    # compared as float32: NaN == NaN is only recognised for NumPy's own float types
    with np.errstate(over="ignore"):  # past the half range is Inf on both sides
        rounded = expected[0].astype(half_dtype).astype(np.float32)
    np.testing.assert_array_equal(got[0].astype(np.float32), rounded)
    for g, e in zip(got[1:], expected[1:]):
        if e is None:
            assert g is None
        else:
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g.reshape(e.shape), e)
