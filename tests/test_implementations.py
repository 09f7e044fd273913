"""Every implementation in ``implementations.IMPLEMENTATIONS`` against the kernel: the
reference twin, the naive loops and the plain-torch baselines the benchmarks time all
compute what nbwoq's kernels compute, bit for bit, on seeded weights of awkward shapes."""

import numpy as np
import pytest

import nbwoq
from implementations import IMPLEMENTATIONS


def _weight(rows, cols, seed=0):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    w[0, :3] = 0.0  # a zero run: ties at the zero point
    return w


def _grid(*axes):
    combos = [{}]
    for name, values in axes:
        combos = [dict(c, **{name: v}) for c in combos for v in values]
    return combos


def _w_scale_args(w, group_size, dtype, scheme):
    _, scale, zp = nbwoq.quant_tensor(w.copy(), group_size=group_size, dtype=dtype, scheme=scheme, return_int=True)
    return dict(scale=scale, zp=zp, group_size=group_size, dtype=dtype)


INT = _grid(("bits", [2, 4, 8]), ("scheme", ["asym", "sym"]), ("group_size", [32, -1]))
#: op -> [(weight shape, kwargs or a function of the weight giving them)]
CASES = {
    "quant_tensor": [(shape, kw) for shape in [(4, 128), (3, 96)] for kw in INT],
    "quant_tensor_codes": [(shape, kw) for shape in [(4, 128), (3, 96)] for kw in INT],
    "quant_tensor_codebook": [((5, 128), kw) for kw in _grid(("group_size", [32, 64]), ("dtype", ["nf4", "fp4"]),
                                                             ("return_int", [False, True]))],
    "quant_weight_w_scale": [((4, 128), lambda w, kw=kw: _w_scale_args(w, **kw))
                             for kw in _grid(("group_size", [32, 128]), ("dtype", ["int", "nf4"]),
                                             ("scheme", ["asym", "sym"]))],
    "double_quant": [((64, 512), dict(group_size=128)), ((48, 1024), dict(group_size=128))],
    "search_clip": [((8, 256), dict(cfg, **mode))
                    for cfg in (dict(bits=4, group_size=128, scheme="asym", dtype="int"),
                                dict(group_size=64, dtype="nf4"))
                    for mode in _grid(("per_group", [False, True]), ("weighting", [None, "magnitude"]))],
    "refit_int": [((6, 160), kw) for kw in _grid(("bits", [3, 4]), ("scheme", ["asym", "sym"]), ("group_size", [32, 128]),
                                                  ("weighting", [None, "magnitude"]))],
    # clip ratio 0.5 as the start: from round-to-nearest's own grid few zero points move
    "refine_zero": [((6, 160), kw) for kw in _grid(("bits", [3, 4]), ("group_size", [32, 128]),
                                                    ("weighting", [None, "magnitude"]), ("quantile", [1.0, 0.5]))],
    "torch_order_sum": [((n,), {}) for n in (1, 9, 129, 2049)],
}


def _params():
    for op, impls in IMPLEMENTATIONS.items():
        for name in impls:
            if name == "kernel":
                continue
            for k, (shape, kw) in enumerate(CASES[op]):
                label = "-".join(f"{v}" for v in kw.values()) if isinstance(kw, dict) else f"case{k}"
                yield pytest.param(op, name, shape, kw, id=f"{op}-{name}-{'x'.join(map(str, shape))}-{label}")


def test_every_operation_has_cases():
    assert set(CASES) == set(IMPLEMENTATIONS)


@pytest.mark.parametrize("op, name, shape, kwargs", list(_params()))
def test_implementation_equals_the_kernel(op, name, shape, kwargs):
    if name == "reference":
        pytest.importorskip("array_api_strict")
    if name.startswith("torch"):
        pytest.importorskip("torch")
    w = _weight(*shape) if len(shape) == 2 else np.random.default_rng(shape[0]).uniform(0.001, 0.02, shape).astype(
        np.float32)
    kw = kwargs(w) if callable(kwargs) else kwargs
    impl = IMPLEMENTATIONS[op][name]
    if not impl.supports(**kw):
        pytest.skip(f"{name} covers the integer format only, not dtype={kw.get('dtype')!r}")
    want = IMPLEMENTATIONS[op]["kernel"](w, **kw)
    got = impl(w, **kw)
    for g, e in zip(got if isinstance(want, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        if e is None:
            assert g is None
        else:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e).reshape(np.shape(g)))
