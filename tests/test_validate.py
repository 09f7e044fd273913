"""Bad input raises ValueError/TypeError naming the argument, before anything is written."""

import array_api_strict
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbwoq

ml_dtypes = pytest.importorskip("ml_dtypes")


def weight(dtype=np.float32, shape=(4, 64)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def assert_refused(exc_type, match, func, w, *args, **kwargs):
    """``func`` raises ``exc_type`` whose message matches, and ``w`` is byte-identical."""
    before = w.tobytes()
    with pytest.raises(exc_type, match=match):
        func(w, *args, **kwargs)
    assert w.tobytes() == before


FUNCS = {
    "quant_tensor": nbwoq.quant_tensor,
    "qdq_weight_asym": nbwoq.qdq_weight_asym,
    "qdq_weight_sym": nbwoq.qdq_weight_sym,
    "qdq_weight_actor": lambda w, **kw: nbwoq.qdq_weight_actor(w, kw.pop("bits", 4), kw.pop("scheme", "asym"), **kw),
}


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (dict(bits=17), ValueError, "bits must be at most 16"),
        (dict(bits=4.0), TypeError, "bits must be an integer"),
        (dict(bits="4"), TypeError, "bits must be an integer"),
        (dict(bits=True), TypeError, "bits must be an integer"),
        (dict(quantile=0.0), ValueError, "quantile must be in"),
        (dict(quantile=1.5), ValueError, "quantile must be in"),
        (dict(quantile=float("nan")), ValueError, "quantile must be in"),
        (dict(quantile="0.9"), TypeError, "quantile must be a real number"),
        (dict(return_int="yes"), TypeError, "return_int must be True or False"),
        (dict(check_finite=1), TypeError, "check_finite must be True or False"),
        (dict(no_such_option=1), TypeError, "unexpected keyword"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}" for k in v),
)
def test_bad_arguments(name, bad, exc, match):
    assert_refused(exc, match, FUNCS[name], weight(), **bad)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (dict(group_size=0), ValueError, "group_size must be -1 or a positive integer, got 0"),
        (dict(group_size=-2), ValueError, "group_size must be -1 or a positive integer, got -2"),
        (dict(group_size=32.0), TypeError, "group_size must be an integer"),
        (dict(scheme="symmetric"), ValueError, "scheme must be one of"),
        (dict(scheme=None), ValueError, "scheme must be one of"),
        (dict(dtype="fp8_e4m3fn"), ValueError, "dtype must be one of"),
        (dict(dtype="INT"), ValueError, "dtype must be one of"),
        (dict(bits=1, scheme="sym", full_range=True), ValueError, "full_range needs bits >= 2"),
        (dict(group_size=32, quantile=np.ones((4, 3), np.float32)), ValueError, r"shape \(rows, n_groups\)"),
        (dict(group_size=32, quantile=np.full((4, 2), 1.5, np.float32)), ValueError, r"lie in \(0, 1\]"),
        (dict(group_size=32, quantile=np.ones((4, 2), np.int32)), TypeError, "float16, float32 or float64"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}"[:30] for k in v),
)
def test_bad_quant_tensor_arguments(bad, exc, match):
    assert_refused(exc, match, nbwoq.quant_tensor, weight(), **bad)


@pytest.mark.parametrize("shape", [(64,), (2, 4, 8), ()], ids=str)
def test_wrong_rank(shape):
    assert_refused(ValueError, "weight must be a 2-D array", nbwoq.quant_tensor, np.ones(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint16, np.bool_, np.complex64, np.longdouble], ids=str)
def test_unsupported_dtypes(dtype):
    assert_refused(TypeError, "float16, bfloat16, float32 or float64", nbwoq.quant_tensor,
                   np.ones((4, 8), dtype=dtype))


def test_not_an_array():
    with pytest.raises(TypeError, match="weight must be an array"):
        nbwoq.quant_tensor([[1.0, 2.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_the_first_bad_row(dtype, bad):
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    w = weight(dtype, (6, 40))
    w[4, 7] = bad
    w[5, 0] = bad
    for name, func in FUNCS.items():
        assert_refused(ValueError, "non-finite .* first in row 4", func, w)


def test_the_non_finite_error_carries_the_row():
    from nbwoq._validate import NonFiniteError

    w = weight(np.float32, (6, 40))
    w[3, 1] = np.nan
    for path in (lambda a: a, array_api_strict.asarray):
        with pytest.raises(NonFiniteError, match="first in row 3; pass check_finite=False") as info:
            nbwoq.quant_tensor(path(w.copy()))
        assert info.value.row == 3 and isinstance(info.value, ValueError)
    with pytest.raises(NonFiniteError, match=r"first in row 3$") as info:
        nbwoq.search_clip(w)
    assert info.value.row == 3


def test_read_only_arrays_are_refused():
    w = weight()
    w.setflags(write=False)
    for func in FUNCS.values():
        assert_refused(ValueError, "weight is read-only", func, w)


def test_qdq_weight_actor_needs_positive_bits():
    assert_refused(ValueError, "bits must be a positive integer", nbwoq.qdq_weight_actor, weight(), 0, "asym")


def test_bits_zero_returns_weight_untouched():
    w = weight()
    before = w.tobytes()
    assert nbwoq.quant_tensor(w, bits=0, return_int=True) is w
    assert w.tobytes() == before


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(-2, 18) | st.floats(0, 8) | st.none(),
    group_size=st.integers(-3, 70) | st.floats(-1, 64),
    scheme=st.sampled_from(["sym", "asym", "Sym", "", "nf4"]),
    dtype=st.sampled_from(["int", "nf3", "float", "fp8"]),
    quantile=st.floats(-1, 2) | st.just(float("nan")) | st.integers(-1, 2),
    full_range=st.booleans(),
)
def test_any_call_returns_or_refuses_cleanly(bits, group_size, scheme, dtype, quantile, full_range):
    """Every combination either works or raises ValueError/TypeError with the input intact."""
    w = weight(shape=(3, 64))
    before = w.tobytes()
    try:
        out = nbwoq.quant_tensor(w, bits=bits, group_size=group_size, scheme=scheme, dtype=dtype,
                                 quantile=quantile, full_range=full_range)
    except (ValueError, TypeError) as exc:
        assert w.tobytes() == before
        assert any(name in str(exc) for name in ("bits", "group_size", "scheme", "dtype", "quantile", "full_range"))
        return
    assert out is w
