"""The torch face on CPU tensors: zero-copy in place, the same object back, the same
numbers as the core, the reference path when forced, and refusals before any write."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nbwoq  # noqa: E402
import nbwoq_torch  # noqa: E402
from nbwoq_torch import _interop  # noqa: E402

DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


def _weight(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


def _bytes(t):
    """The tensor's exact bit pattern, for 'untouched' checks (NaN-safe)."""
    return t.detach().contiguous().view(torch.uint8).clone()


def _core_result(func, t, **kwargs):
    """The core's answer on a NumPy copy of ``t`` (torch tensors in kwargs become NumPy)."""
    a = _interop.to_numpy(t.detach().clone())
    kwargs = {k: (_interop.to_numpy(v.clone()) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    result = func(a, **kwargs)
    return result if isinstance(result, tuple) else (result,)


def _as_float32_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32).numpy()
    return np.asarray(x).astype(np.float32)


def _assert_same(got, expected):
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
            continue
        np.testing.assert_array_equal(_as_float32_numpy(g), _as_float32_numpy(e))


# --- zero copy, identity --------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_numpy_view_shares_the_tensor_memory(dtype):
    t = _weight((8, 64), DTYPES[dtype])
    view = _interop.to_numpy(t)
    assert view.ctypes.data == t.data_ptr()
    assert view.shape == (8, 64) and view.dtype.itemsize == t.element_size()
    view[0, 0] = 3  # a write through the view is a write to the tensor
    assert t[0, 0].item() == 3


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("return_int", [False, True], ids=["fake", "int"])
def test_quant_tensor_in_place_same_object_same_numbers_as_core(dtype, return_int):
    t = _weight((33, 96), DTYPES[dtype])
    expected = _core_result(nbwoq.quant_tensor, t, bits=4, group_size=32, return_int=return_int)
    ptr = t.data_ptr()
    got = nbwoq_torch.quant_tensor(t, bits=4, group_size=32, return_int=return_int)
    first = got[0] if return_int else got
    assert first is t and t.data_ptr() == ptr
    _assert_same(got, expected)
    if return_int:
        # codes stay in the weight's dtype; scale/zp are float32 (float64 for float64 weights)
        assert t.dtype == DTYPES[dtype]
        param_dtype = torch.float64 if dtype == "f64" else torch.float32
        assert got[1].dtype == param_dtype and got[2].dtype == param_dtype
        assert tuple(got[1].shape) == (33, 3) and isinstance(got[1], torch.Tensor)


@pytest.mark.parametrize("n", [1024, 512, 300])
def test_quant_tensor_of_randn_returns_its_input_object(n):
    w = torch.randn(n, n)
    assert nbwoq_torch.quant_tensor(w) is w


def test_scales_share_memory_with_the_core_result(monkeypatch):
    # scales come back through torch.from_numpy, never copied
    captured = {}
    real = nbwoq.quantize.quant_tensor

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        captured["scale"] = result[1]
        return result

    monkeypatch.setattr(nbwoq.quantize, "quant_tensor", spy)
    _, scale, _ = nbwoq_torch.quant_tensor(_weight((4, 64), torch.float32), group_size=32, return_int=True)
    assert scale.data_ptr() == captured["scale"].ctypes.data


def test_bits_zero_returns_the_input_untouched():
    t = _weight((4, 64), torch.bfloat16)
    before = _bytes(t)
    assert nbwoq_torch.quant_tensor(t, bits=0, return_int=True) is t
    assert torch.equal(_bytes(t), before)


# --- the other tensor functions ---------------------------------------------------------

ROWWISE = [
    ("asym", nbwoq_torch.qdq_weight_asym, "qdq_weight_asym", dict(bits=3)),
    ("sym", nbwoq_torch.qdq_weight_sym, "qdq_weight_sym", dict(bits=4)),
    ("sym-fr", nbwoq_torch.qdq_weight_sym, "qdq_weight_sym", dict(bits=4, full_range=True)),
    ("actor-asym", nbwoq_torch.qdq_weight_actor, "qdq_weight_actor", dict(bits=8, scheme="asym")),
    ("actor-sym", nbwoq_torch.qdq_weight_actor, "qdq_weight_actor", dict(bits=2, scheme="sym")),
    ("actor-nf4", nbwoq_torch.qdq_weight_actor, "qdq_weight_actor", dict(bits=4, scheme="sym", dtype="nf4")),
    ("4bit-nf4", nbwoq_torch.quantize_4bit, "quantize_4bit", dict(dtype="nf4")),
    ("4bit-fp4", nbwoq_torch.quantize_4bit, "quantize_4bit", dict(dtype="fp4", quantile=0.9)),
    ("4bit-e2m1", nbwoq_torch.quantize_4bit, "quantize_4bit", dict(dtype="fp4_e2m1")),
    ("qt-nf4", nbwoq_torch.quant_tensor, "quant_tensor", dict(dtype="nf4", group_size=48)),
]


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("return_int", [False, True], ids=["fake", "int"])
@pytest.mark.parametrize("label,func,core_name,kwargs", ROWWISE, ids=[r[0] for r in ROWWISE])
def test_tensor_functions_match_the_core(label, func, core_name, kwargs, return_int, dtype):
    t = _weight((17, 100), DTYPES[dtype], seed=3)
    expected = _core_result(getattr(nbwoq.quantize, core_name), t, return_int=return_int, **kwargs)
    got = func(t, return_int=return_int, **kwargs)
    assert (got[0] if return_int else got) is t
    _assert_same(got, expected)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("codebook", ["int", "nf4"])
def test_quant_weight_w_scale_writes_codes_into_the_weight(codebook, dtype):
    w = _weight((16, 96), DTYPES[dtype], seed=5)
    _, scale, zp = nbwoq_torch.quant_tensor(w.clone(), bits=4, group_size=32, dtype=codebook, return_int=True)
    kwargs = dict(scale=scale, zp=zp, group_size=32, dtype=codebook)
    expected = _core_result(nbwoq.quantize.quant_weight_w_scale, w, **kwargs)
    ptr = w.data_ptr()
    out = nbwoq_torch.quant_weight_w_scale(w, **kwargs)
    assert out is w and w.data_ptr() == ptr
    _assert_same(out, expected)


def test_quantize_4bit_with_a_given_scale():
    t = _weight((8, 64), torch.float32)
    scale = t.abs().amax(dim=1, keepdim=True) / 2
    expected = _core_result(nbwoq.quantize.quantize_4bit, t, scale=scale, return_int=True)
    _assert_same(nbwoq_torch.quantize_4bit(t, scale=scale, return_int=True), expected)


# --- the reference path, forced on CPU ---------------------------------------------------

GRID = [
    (bits, g, scheme, dtype, shape)
    for bits, g, scheme in [(4, 32, "asym"), (3, -1, "sym"), (8, 33, "asym"), (2, 128, "sym")]
    for dtype in DTYPES
    for shape in [(1, 1), (3, 33), (17, 100)]
]


def _grid_id(p):
    bits, g, scheme, dtype, shape = p
    return f"bits{bits}-g{g}-{scheme}-{dtype}-{shape[0]}x{shape[1]}"


@pytest.mark.parametrize("params", GRID, ids=[_grid_id(p) for p in GRID])
def test_reference_path_equals_numba_path(params):
    bits, g, scheme, dtype, shape = params
    a = _weight(shape, DTYPES[dtype], seed=7)
    b = a.clone()
    got_numba = nbwoq_torch.quant_tensor(a, bits=bits, group_size=g, scheme=scheme, return_int=True)
    with _interop.reference_path():
        assert not _interop.uses_kernels(b)
        got_ref = nbwoq_torch.quant_tensor(b, bits=bits, group_size=g, scheme=scheme, return_int=True)
    assert got_ref[0] is b and got_ref[1].device == b.device
    _assert_same(got_ref, got_numba)
    assert torch.equal(_bytes(a), _bytes(b))


def test_reference_path_is_used_for_dtypes_the_kernels_do_not_take():
    # A CPU int tensor goes the reference way, where the core names what it expected.
    with pytest.raises(TypeError, match="floating"):
        nbwoq_torch.quant_tensor(torch.ones(4, 8, dtype=torch.int32))


# --- non-contiguous, grad ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_transposed_weight_is_quantized_through_a_copy_and_written_back(dtype):
    base = _weight((64, 48), DTYPES[dtype], seed=11)
    w = base.t()  # (48, 64), non-contiguous
    expected = _core_result(nbwoq.quant_tensor, w.contiguous(), bits=4, group_size=32, return_int=True)
    ptr = w.data_ptr()
    got = nbwoq_torch.quant_tensor(w, bits=4, group_size=32, return_int=True)
    assert got[0] is w and w.data_ptr() == ptr and not w.is_contiguous()
    _assert_same(got, expected)
    _assert_same(base.t().contiguous(), expected[:1])


def test_column_slice_leaves_the_other_columns_alone():
    big = _weight((16, 128), torch.float32, seed=12)
    before = big.clone()
    view = big[:, 32:96]
    expected = _core_result(nbwoq.quant_tensor, view.contiguous(), bits=4, group_size=32)
    assert nbwoq_torch.quant_tensor(view, bits=4, group_size=32) is view
    _assert_same(big[:, 32:96], expected)
    assert torch.equal(big[:, :32], before[:, :32]) and torch.equal(big[:, 96:], before[:, 96:])


def test_row_slice_is_contiguous_and_needs_no_copy(monkeypatch):
    big = _weight((16, 64), torch.float32)
    view = big[4:8]
    assert view.is_contiguous()
    monkeypatch.setattr(torch.Tensor, "contiguous", lambda self: pytest.fail("copied a contiguous tensor"))
    nbwoq_torch.quant_tensor(view, group_size=32)


def test_expanded_weight_is_refused_untouched():
    row = _weight((1, 64), torch.float32)
    w = row.expand(8, 64)
    before = _bytes(row)
    with pytest.raises(ValueError, match="share memory"):
        nbwoq_torch.quant_tensor(w)
    assert torch.equal(_bytes(row), before)


def test_parameter_requiring_grad_is_quantized_through_data():
    layer = torch.nn.Linear(64, 16)
    p = layer.weight
    expected = _core_result(nbwoq.quant_tensor, p, bits=4, group_size=32)
    assert nbwoq_torch.quant_tensor(p, bits=4, group_size=32) is p
    assert p.requires_grad and p.grad_fn is None and isinstance(p, torch.nn.Parameter)
    _assert_same(p, expected)
    with _interop.reference_path():  # the reference path writes through .data as well
        q = torch.nn.Linear(64, 16).weight
        assert nbwoq_torch.quant_tensor(q, bits=4, group_size=32) is q


# --- bad input: refused before anything is written -------------------------------------------

BAD_CALLS = {
    "not-a-tensor": (lambda w: nbwoq_torch.quant_tensor(w.float().numpy()), TypeError, "torch.Tensor"),
    "one-d": (lambda w: nbwoq_torch.quant_tensor(w[0]), ValueError, "2-D"),
    "three-d": (lambda w: nbwoq_torch.quant_tensor(w[None]), ValueError, "2-D"),
    "dtype-typo": (lambda w: nbwoq_torch.quant_tensor(w, dtype="nf5"), ValueError, "dtype"),
    "scheme-typo": (lambda w: nbwoq_torch.quant_tensor(w, scheme="asymm"), ValueError, "scheme"),
    "group-zero": (lambda w: nbwoq_torch.quant_tensor(w, group_size=0), ValueError, "group_size"),
    "bits-17": (lambda w: nbwoq_torch.quant_tensor(w, bits=17), ValueError, "bits"),
    "bits-float": (lambda w: nbwoq_torch.quant_tensor(w, bits=4.0), TypeError, "bits"),
    "full-range-1bit": (lambda w: nbwoq_torch.quant_tensor(w, bits=1, scheme="sym", full_range=True),
                        ValueError, "full_range"),
    "quantile-zero": (lambda w: nbwoq_torch.quant_tensor(w, quantile=0.0), ValueError, "quantile"),
    "unknown-kwarg": (lambda w: nbwoq_torch.quant_tensor(w, chek_finite=False), TypeError, "chek_finite"),
    "quantile-on-meta": (lambda w: nbwoq_torch.quant_tensor(w, group_size=32,
                                                            quantile=torch.ones(8, 2, device="meta")),
                         ValueError, "device"),
    "asym-bits-zero": (lambda w: nbwoq_torch.qdq_weight_asym(w, bits=0), ValueError, "bits"),
    "4bit-int-dtype": (lambda w: nbwoq_torch.quantize_4bit(w, dtype="int"), ValueError, "dtype"),
}


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("reference", [False, True], ids=["numba", "reference"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_before_any_write(case, reference, dtype):
    call, error, words = BAD_CALLS[case]
    w = _weight((8, 64), DTYPES[dtype])
    before = _bytes(w)
    if reference:
        with _interop.reference_path(), pytest.raises(error, match=words):
            call(w)
    else:
        with pytest.raises(error, match=words):
            call(w)
    assert torch.equal(_bytes(w), before)


@pytest.mark.parametrize("reference", [False, True], ids=["numba", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weight_is_refused_naming_the_row(bad, reference):
    w = _weight((8, 64), torch.bfloat16)
    w[5, 7] = bad
    before = _bytes(w)
    if reference:
        with _interop.reference_path(), pytest.raises(ValueError, match="row 5"):
            nbwoq_torch.quant_tensor(w, group_size=32)
    else:
        with pytest.raises(ValueError, match="row 5"):
            nbwoq_torch.quant_tensor(w, group_size=32)
    assert torch.equal(_bytes(w), before)


def test_non_contiguous_failure_leaves_the_caller_untouched():
    base = _weight((64, 48), torch.float32)
    base[3, 5] = float("nan")
    before = _bytes(base)
    with pytest.raises(ValueError, match="non-finite"):
        nbwoq_torch.quant_tensor(base.t())
    assert torch.equal(_bytes(base), before)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([1, 3, 17]),
    cols=st.sampled_from([1, 7, 33, 64, 130]),
    bits=st.sampled_from([1, 2, 4, 8]),
    group_size=st.sampled_from([-1, 1, 16, 32, 100]),
    scheme=st.sampled_from(["asym", "sym"]),
    dtype=st.sampled_from(list(DTYPES)),
    transpose=st.booleans(),
)
@example(rows=17, cols=130, bits=4, group_size=32, scheme="asym", dtype="bf16", transpose=True)
@example(rows=1, cols=1, bits=1, group_size=-1, scheme="sym", dtype="f16", transpose=False)
def test_property_torch_face_equals_the_core(rows, cols, bits, group_size, scheme, dtype, transpose):
    w = _weight((cols, rows) if transpose else (rows, cols), DTYPES[dtype], seed=rows * 1000 + cols)
    w = w.t() if transpose else w
    expected = _core_result(nbwoq.quant_tensor, w.contiguous(), bits=bits, group_size=group_size, scheme=scheme,
                            return_int=True)
    got = nbwoq_torch.quant_tensor(w, bits=bits, group_size=group_size, scheme=scheme, return_int=True)
    assert got[0] is w
    _assert_same(got, expected)


@settings(max_examples=20, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), group_size=st.sampled_from([-1, 16, 32, 48]),
       scheme=st.sampled_from(["asym", "sym"]), dtype=st.sampled_from(list(DTYPES)))
@example(bits=4, group_size=32, scheme="asym", dtype="bf16")
def test_property_fake_quant_is_idempotent(bits, group_size, scheme, dtype):
    # a fake-quantized float32 weight quantizes to itself (half dtypes round the
    # dequantized values, which may move them off the grid, so only float32/64)
    w = _weight((9, 96), DTYPES[dtype], seed=bits)
    nbwoq_torch.quant_tensor(w, bits=bits, group_size=group_size, scheme=scheme)
    if dtype in ("f32", "f64"):
        again = w.clone()
        nbwoq_torch.quant_tensor(again, bits=bits, group_size=group_size, scheme=scheme)
        torch.testing.assert_close(again, w, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(w).all()


# --- search_clip on a module -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("scheme", ["asym", "sym"])
def test_search_clip_leaves_the_module_unchanged_and_matches_the_core(scheme, dtype):
    m = torch.nn.Linear(96, 24).to(DTYPES[dtype])
    before, ptr = _bytes(m.weight), m.weight.data_ptr()
    ratio = nbwoq_torch.search_clip(m, bits=4, group_size=32, scheme=scheme)
    assert type(ratio) is float
    assert ratio == nbwoq.search_clip(_interop.to_numpy(m.weight), bits=4, group_size=32, scheme=scheme)
    assert torch.equal(_bytes(m.weight), before) and m.weight.data_ptr() == ptr


def test_search_clip_per_group_gives_a_quantile_tensor():
    m = torch.nn.Linear(64, 8)
    q = nbwoq_torch.search_clip(m, bits=4, group_size=32, per_group=True)
    assert isinstance(q, torch.Tensor) and tuple(q.shape) == (8, 2)
    w = m.weight.detach().clone()
    assert nbwoq_torch.quant_tensor(w, bits=4, group_size=32, quantile=q) is w


def test_search_clip_on_a_transposed_weight_matches_its_contiguous_copy():
    m = torch.nn.Linear(48, 64)
    m.weight = torch.nn.Parameter(m.weight.detach().t().contiguous().t())  # same values, transposed storage
    assert not m.weight.is_contiguous()
    ratio = nbwoq_torch.search_clip(m, bits=3, group_size=16)
    assert ratio == nbwoq.search_clip(m.weight.detach().contiguous().numpy(), bits=3, group_size=16)


@pytest.mark.parametrize(
    "module,error,words",
    [
        (torch.nn.ReLU(), TypeError, "weight"),
        (torch.nn.Conv2d(3, 4, 3), ValueError, "2-D"),
        ("not a module", TypeError, "Module"),
    ],
    ids=["no-weight", "conv-4d", "not-module"],
)
def test_search_clip_refuses_what_it_cannot_search(module, error, words):
    with pytest.raises(error, match=words):
        nbwoq_torch.search_clip(module)


def test_search_clip_bad_argument_leaves_the_module_unchanged():
    m = torch.nn.Linear(64, 8)
    before = _bytes(m.weight)
    with pytest.raises(ValueError, match="scheme"):
        nbwoq_torch.search_clip(m, scheme="asymm")
    assert torch.equal(_bytes(m.weight), before)
