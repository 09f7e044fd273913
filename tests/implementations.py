"""Every implementation of each operation, in one table (numbagg's ``COMPARISONS``).

``IMPLEMENTATIONS[op][name]`` is an ``Implementation`` of ``op``; the names are

* ``"kernel"``: nbwoq on NumPy arrays (the Numba kernels);
* ``"reference"``: nbwoq on ``array_api_strict`` arrays (the array-API reference twin,
  float32/float64 only: the standard has no half types);
* ``"naive"``: the slow, obvious loops of ``tests/naive.py``;
* ``"torch"`` (and ``"torch-vectorized"``): the reference library's formula in plain
  torch, as the benchmarks time it (``asv_bench/benchmarks/common.py``).

Not every operation has all of them. Each one takes the NumPy weight and the keyword
arguments of the operation (array arguments such as a given ``scale`` as NumPy too) and
hands back NumPy results of one shape per operation, so any two can be compared;
``convert`` and ``call`` are the two halves a benchmark times apart (the copy in setup,
the call timed).

Imported by ``tests/test_implementations.py`` (each implementation against the kernel),
the asv benchmarks (``asv_bench/benchmarks/bench_*.py``, through ``common.py``, which puts
``tests/`` on ``sys.path``) and ``docs/perf/measure.py``. It lives in ``tests/`` beside
``naive.py``, the oracles it lists; the plain-torch baselines it lists live with the other
benchmark helpers in ``asv_bench/benchmarks/common.py`` and are loaded on first use.
"""

import pathlib
import sys

import numpy as np

import naive
import nbwoq
from nbwoq import _double_quant

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _baselines():
    """``asv_bench/benchmarks/common.py``: the instance already imported where there is one
    (``benchmarks.common`` under asv, ``common`` when a benchmark file runs as a script)."""
    for name in ("benchmarks.common", "common"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "torch_int_codes"):
            return module
    if str(ROOT / "asv_bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "asv_bench"))
    from benchmarks import common

    return common


# --- conversions in and out ------------------------------------------------------------


def _numpy_copy(a):
    return np.array(a, copy=True)


def _strict_namespace():
    import array_api_strict

    return array_api_strict


def _strict(a):
    return _strict_namespace().asarray(np.array(a, copy=True))


def _torch_copy(a):
    return _baselines().torch_from_numpy(a)


def _to_numpy(x):
    """NumPy float32/float64 of any result array (None stays None; tuples element-wise)."""
    if isinstance(x, tuple):
        return tuple(_to_numpy(v) for v in x)
    if x is None or isinstance(x, float):
        return x
    if type(x).__module__.startswith("torch"):
        x = x.detach()
        return (x.float() if x.dtype.itemsize == 2 else x).numpy()
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype.itemsize == 2 else x


class Implementation:
    """``convert`` turns a NumPy array into this implementation's own fresh copy; ``call``
    runs the operation on converted arguments (in place where the operation is);
    calling the implementation does both and returns NumPy (``normalize`` gives the
    operation's result shape). ``supports(**kwargs)``: whether it covers those arguments
    (the naive given-scale loop and the torch baselines cover part of each operation)."""

    def __init__(self, call, convert=_numpy_copy, normalize=None, supports=None):
        self.call, self.convert, self.normalize = call, convert, normalize
        self.supports = supports or (lambda **kwargs: True)

    def __call__(self, w, **kwargs):
        kwargs = {k: self.convert(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        result = _to_numpy(self.call(self.convert(w), **kwargs))
        return self.normalize(result) if self.normalize else result


def _twins(call, normalize=None):
    """The kernel and the reference twin: the same public call on NumPy and on strict arrays."""
    return dict(kernel=Implementation(call, normalize=normalize),
                reference=Implementation(call, _strict, normalize))


# --- the operations --------------------------------------------------------------------


def _naive_int_codes(w, bits=4, group_size=-1, scheme="asym", quantile=1.0, full_range=False):
    codes, scale, zp = naive.quant_tensor_int(w, bits, group_size, scheme, quantile, full_range)
    return codes, scale, zp if scheme == "asym" else None


def _naive_int_fake(w, **kwargs):
    """The naive codes dequantized: ``(code - zp) * scale`` in float32, per group."""
    codes, scale, zp = _naive_int_codes(w, **kwargs)
    size = -(-codes.shape[1] // scale.shape[1])
    expand = lambda p: np.repeat(p, size, axis=1)[:, :codes.shape[1]]  # noqa: E731
    return (codes - (0 if zp is None else expand(zp))) * expand(scale)


def _torch_int_codes(t, bits=4, group_size=-1, scheme="asym"):
    rows, cols = t.shape
    x = t.reshape(-1, cols if group_size == -1 else group_size)
    scale, zp = _baselines().torch_int_codes(x, bits, scheme)
    return t, scale.reshape(rows, -1), None if zp is None else zp.reshape(rows, -1)


def _clip_ratio_naive(w, bits=4, group_size=32, scheme="asym", dtype="int", per_group=False, weighting=None):
    """The 40-pass search: the first ratio of least total (or per-group) squared error."""
    ratios = _baselines().RATIOS
    errors = naive.clip_group_errors(w, ratios, bits, group_size, scheme, dtype, weighting=weighting)
    if not per_group:
        return ratios[naive.first_min(errors.sum(axis=(1, 2)))]
    picks = [[ratios[naive.first_min(errors[:, r, g])] for g in range(errors.shape[2])]
             for r in range(errors.shape[1])]
    return np.asarray(picks, dtype=np.float32)


def _sym_zp(result, kw):
    """The naive refit's zero points as the API returns them: None for ``"sym"``."""
    codes, scale, zp = result
    return codes, scale, None if kw.get("scheme", "asym") == "sym" else zp


def _as_ratio(r):
    return float(r) if np.ndim(r) == 0 else np.asarray(r, dtype=np.float32)


IMPLEMENTATIONS = {
    # integer fake quantization, in place; kwargs bits, group_size, scheme
    "quant_tensor": dict(
        **_twins(lambda w, **kw: nbwoq.quant_tensor(w, **kw)),
        naive=Implementation(_naive_int_fake),
        torch=Implementation(lambda t, bits=4, group_size=-1, scheme="asym":
                             _baselines().torch_quant_tensor(t, bits, group_size, scheme), _torch_copy),
    ),
    # integer codes and parameters: (codes, scale, zp or None)
    "quant_tensor_codes": dict(
        **_twins(lambda w, **kw: nbwoq.quant_tensor(w, return_int=True, **kw)),
        naive=Implementation(_naive_int_codes),
        torch=Implementation(_torch_int_codes, _torch_copy),
    ),
    # a 4-bit codebook, in place; kwargs group_size, dtype, return_int; the weight
    "quant_tensor_codebook": dict(
        **_twins(lambda w, **kw: nbwoq.quant_tensor(w, **kw), normalize=lambda r: r[0] if isinstance(r, tuple) else r),
        naive=Implementation(lambda w, group_size, dtype, return_int=False:
                             naive.quant_tensor_codebook(w, group_size, dtype, return_int=return_int)[0]),
        torch=Implementation(lambda t, group_size, dtype, return_int=False:
                             _baselines().torch_quantize_codebook(t, dtype, group_size, return_int), _torch_copy),
    ),
    # the codes of given scales (and zero points); kwargs scale, zp, group_size, dtype
    "quant_weight_w_scale": dict(
        **_twins(lambda w, **kw: nbwoq.quant_weight_w_scale(w, **kw)),
        naive=Implementation(lambda w, scale, zp=None, group_size=-1, dtype="int", bits=None:
                             naive.quant_weight_w_scale_int(w, scale, zp, group_size, bits),
                             supports=lambda dtype="int", **kw: dtype == "int"),
        torch=Implementation(lambda t, scale, zp=None, group_size=-1, dtype="int":
                             _baselines().torch_w_scale(t, scale, zp, group_size, dtype), _torch_copy),
        **{"torch-vectorized": Implementation(lambda t, scale, zp=None, group_size=-1, dtype="int":
                                              _baselines().torch_w_scale_vectorized(t, scale, zp, group_size),
                                              _torch_copy, supports=lambda dtype="int", **kw: dtype == "int")},
    ),
    # double quantization with its defaults, fake-quantized, in place; kwargs group_size
    "double_quant": dict(
        **_twins(lambda w, group_size: nbwoq.quant_tensor(w, group_size=group_size, double_quant=True)),
        torch=Implementation(lambda t, group_size: _baselines().torch_double_quant(t, group_size), _torch_copy),
    ),
    # the clip ratio (per group: an array); kwargs bits, group_size, scheme, dtype, per_group, weighting
    "search_clip": dict(
        **_twins(lambda w, **kw: nbwoq.search_clip(w, **kw), normalize=_as_ratio),
        naive=Implementation(_clip_ratio_naive, normalize=_as_ratio),
        torch=Implementation(lambda t, bits=4, group_size=32, scheme="asym", dtype="int", per_group=False,
                             weighting=None: _baselines().torch_search_clip(t, bits, group_size, scheme, dtype,
                                                                            per_group, weighting),
                             _torch_copy, _as_ratio),
    ),
    # data-free refits in the integer layout: (codes, scale, zp or None); kwargs bits,
    # group_size, scheme (refit_int also full_range, weighting)
    "refit_int": dict(
        **_twins(lambda w, **kw: nbwoq.refit_int(w, **kw)),
        naive=Implementation(lambda w, **kw: _sym_zp(naive.refit_int(w, **kw), kw)),
    ),
    "refine_zero": dict(
        **_twins(lambda w, **kw: nbwoq.refine_zero(w, **kw)),
        naive=Implementation(lambda w, **kw: naive.refine_zero(w, **kw)),
    ),
    # the double-quant scale mean's sum, in torch's float32 order; a 1-D array
    "torch_order_sum": dict(
        kernel=Implementation(lambda x: _double_quant.torch_order_sum(x, np)),
        reference=Implementation(lambda x: _double_quant.torch_order_sum(x, _strict_namespace()), _strict),
        naive=Implementation(naive.torch_order_sum),
    ),
}
