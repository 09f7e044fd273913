"""search_clip on arrays: the fused one-pass kernel against a plain 40-pass search.

The oracle for the scores is the obvious method: fake-quantize a copy with
``quant_tensor`` once per candidate and sum the squared errors per group
(``naive_group_errors``). The kernel sums in a different order, so totals are compared
to a relative 1e-9 and per-group picks where no near-tie (1e-12) makes the order matter.
"""

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nbwoq
from naive import clip_group_errors as naive_group_errors
from naive import compute_dtype as _compute
from naive import fake_quant, first_min
from nbwoq import _reference_clip, clip
from nbwoq._tables import kernel_tables
from nbwoq._integer import int_range
from nbwoq._layout import group_layout

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

DEFAULT = [1 - i / 200 for i in range(40)]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEAR_TIE = 1e-12
TOTAL_RTOL = 1e-9


def group_errors_at(w, quantile, **kw):
    """Squared-error sums per group (rows, n_groups) of ``quant_tensor(w, quantile=...)``."""
    rows, cols = w.shape
    size, n_groups = group_layout(cols, kw.get("group_size", 32))
    cdt = _compute(w.dtype)
    q = fake_quant(w, quantile, **kw).astype(cdt)
    d = w.astype(cdt) - q
    sq = (d * d).astype(np.float64)
    return np.stack([sq[:, g * size:(g + 1) * size].sum(axis=1) for g in range(n_groups)], axis=1)


def totals(x, ratios=DEFAULT, bits=4, group_size=32, scheme="asym", dtype="int", enable_full_range=False,
           per_group=False, weighting=None):
    """The private scores behind search_clip: totals per ratio, or per-group picks."""
    xp = nbwoq._validate.weight(x, writable=False)
    size, n_groups = group_layout(x.shape[1], group_size)
    result, bad = clip._search(x, xp, list(ratios), bits, size, n_groups, scheme == "sym", enable_full_range,
                               per_group, dtype, weighting == "magnitude")
    assert bad == -1
    return result


def _twin_group_errors(x, bits=4, group_size=32, scheme="asym", dtype="int", enable_full_range=False):
    xp = array_api_compat.array_namespace(x)
    size, _ = group_layout(x.shape[1], group_size)
    cdt = nbwoq._arrays.compute_dtype(x.dtype, xp)
    if dtype == "int":
        qmin, qmax, divisor = int_range(bits, scheme == "sym", enable_full_range)
        fmt = ("int", float(qmin), float(qmax), float(divisor), scheme == "sym", enable_full_range)
    else:
        mids, levels, _, max_level = kernel_tables(dtype, "float64" if cdt == xp.float64 else "float32")
        fmt = ("codebook", xp.asarray(mids.tolist(), dtype=cdt), xp.asarray(levels.tolist(), dtype=cdt),
               float(max_level))
    return _reference_clip.group_errors(x, size, xp.asarray(DEFAULT, dtype=cdt), fmt, xp)


def assert_picks_agree(picks, errors, ratios):
    """``picks`` (rows, n_groups) equals the first argmin of ``errors`` except at near-ties."""
    ratios = np.asarray(ratios)
    expected = np.empty(errors.shape[1:], dtype=np.float64)
    for r in range(errors.shape[1]):
        for g in range(errors.shape[2]):
            expected[r, g] = ratios[first_min(errors[:, r, g])]
    picks = np.asarray(picks, dtype=np.float64)
    expected_c = expected.astype(picks.dtype) if picks.dtype != np.float64 else expected
    for r, g in zip(*np.nonzero(picks != np.asarray(expected_c, dtype=np.float64))):
        got_k = int(np.argmin(np.abs(ratios.astype(np.float32) - np.float32(picks[r, g]))))
        want_k = first_min(errors[:, r, g])
        e_got, e_want = errors[got_k, r, g], errors[want_k, r, g]
        assert e_got <= e_want * (1 + NEAR_TIE) + 1e-300, (r, g, picks[r, g], expected[r, g], e_got, e_want)


CASES = [
    # (rows, cols, dtype, bits, group_size, scheme, full_range)
    (5, 100, "int", 4, 32, "asym", False),
    (5, 100, "int", 3, 32, "sym", False),
    (3, 33, "int", 4, 48, "sym", True),
    (4, 257, "int", 2, 128, "asym", False),
    (2, 64, "int", 8, -1, "asym", False),
    (6, 7, "int", 1, 3, "sym", False),
    (3, 1, "int", 4, 32, "asym", False),
    (1, 1023, "int", 5, 1000, "sym", True),
    (5, 100, "nf4", 4, 32, "asym", False),
    (4, 257, "nf4", 4, 64, "asym", False),
    (3, 33, "fp4", 4, 48, "asym", False),
    (2, 130, "fp4_e2m1", 4, -1, "asym", False),
    (6, 7, "fp4_e2m1_bnb", 4, 3, "asym", False),
]


def _case_id(c):
    rows, cols, dtype, bits, g, scheme, fr = c
    fmt = f"bits{bits}-{scheme}" + ("-fr" if fr else "") if dtype == "int" else dtype
    return f"{rows}x{cols}-{fmt}-g{g}"


def _weight(rows, cols, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w.flat[rng.integers(0, w.size, max(1, w.size // 50))] *= 8  # a few outliers: clipping matters
    return w.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernel_matches_naive_40_passes(case, dtype):
    rows, cols, fmt, bits, g, scheme, fr = case
    w = _weight(rows, cols, dtype)
    kw = dict(bits=bits, group_size=g, scheme=scheme, dtype=fmt, enable_full_range=fr)
    errors = naive_group_errors(w, DEFAULT, **kw)
    got = np.asarray(totals(w, **kw))
    np.testing.assert_allclose(got, errors.sum(axis=(1, 2)), rtol=TOTAL_RTOL, atol=0)
    assert_picks_agree(totals(w, per_group=True, **kw), errors, DEFAULT)
    # The public answer: the first smallest total, or one within the near-tie tolerance.
    ratio = nbwoq.search_clip(w, **kw)
    want = first_min(errors.sum(axis=(1, 2)))
    assert errors[DEFAULT.index(ratio)].sum() <= errors[want].sum() * (1 + TOTAL_RTOL)


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 5))
    cols = draw(st.sampled_from([1, 3, 33, 100, 130]) | st.integers(1, 160))
    elements = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    scheme = draw(st.sampled_from(["asym", "sym"]))
    bits = draw(st.integers(1, 8))
    fmt = draw(st.sampled_from(["int", "int", "nf4", "fp4", "fp4_e2m1"]))
    full_range = fmt == "int" and scheme == "sym" and bits > 1 and draw(st.booleans())
    group_size = draw(st.sampled_from([-1, 1, 3, 32, 48]) | st.integers(1, cols + 2))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kw = dict(bits=bits, group_size=group_size, scheme=scheme, dtype=fmt, enable_full_range=full_range)
    return w.astype(dtype), kw


@SETTINGS
@given(problems())
def test_numba_equals_reference(problem):
    """The kernel and its array-API twin (under array_api_strict) give the same scores."""
    strict = pytest.importorskip("array_api_strict")
    w, kw = problem
    a = np.asarray(totals(w, **kw))
    b = np.asarray(totals(strict.asarray(w), **kw))
    np.testing.assert_allclose(a, b, rtol=TOTAL_RTOL, atol=1e-30)
    pa = totals(w, per_group=True, **kw)
    pb = np.asarray(totals(strict.asarray(w), per_group=True, **kw))
    assert pa.dtype == pb.dtype == _compute(w.dtype)
    # The twin's per-group errors (the naive 40-pass ones are checked against the kernel
    # in test_kernel_matches_naive_40_passes) tell a near-tie from a wrong pick.
    errors = np.asarray(_twin_group_errors(strict.asarray(w), **kw))
    assert_picks_agree(pa, errors, DEFAULT)
    assert_picks_agree(pb, errors, DEFAULT)


#: The magnitude weights hold each group's RMS, summed in a different order by the kernel,
#: the twin and the oracle: it may differ in its last bit, so weighted scores agree to
#: float32 precision and picks to the same near-tie width.
WEIGHTED_RTOL = 1e-5


def assert_weighted_picks(picks, errors, ratios):
    ratios32 = np.asarray(ratios, dtype=np.float32)
    low = errors.min(axis=0)
    for (r, g), pick in np.ndenumerate(np.asarray(picks, dtype=np.float64)):
        if np.isnan(errors[:, r, g]).all():
            continue  # the oracle's scales underflow for every ratio (a lone 1e-45, drawn in CI): nothing to judge
        k = int(np.argmin(np.abs(ratios32 - np.float32(pick))))
        assert errors[k, r, g] <= low[r, g] * (1 + WEIGHTED_RTOL) + 1e-300, (r, g, pick)


@SETTINGS
@given(problems())
def test_magnitude_weighting_matches_the_plain_oracle_on_both_paths(problem):
    """weighting="magnitude": the kernel's and the twin's scores are the 40-pass oracle's
    squared errors times ``rms + |x|``; both pick each group's smallest weighted error."""
    strict = pytest.importorskip("array_api_strict")
    w, kw = problem
    errors = naive_group_errors(w, DEFAULT, weighting="magnitude", **kw)
    with np.errstate(invalid="ignore", over="ignore"):
        want = errors.sum(axis=(1, 2))
    for x in (w, strict.asarray(w)):
        got = np.asarray(totals(x, weighting="magnitude", **kw))
        np.testing.assert_allclose(got, want, rtol=WEIGHTED_RTOL, atol=1e-30)
        assert_weighted_picks(totals(x, per_group=True, weighting="magnitude", **kw), errors, DEFAULT)


def test_magnitude_weighting_keeps_an_outlier_plain_mse_clips():
    """One large weight in a group of small ones: plain MSE clips it (the many small
    errors win), the magnitude weighting keeps it unclipped."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((1, 128)) * 0.1).astype(np.float32)
    w[0, 7] = 1.5
    plain = nbwoq.search_clip(w, bits=4, group_size=128)
    weighted = nbwoq.search_clip(w, bits=4, group_size=128, weighting="magnitude")
    assert plain < weighted == 1.0


@pytest.mark.parametrize("value, exc", [("l2", ValueError), (1, TypeError), (True, TypeError)])
def test_bad_weighting_is_refused(value, exc):
    w = np.ones((2, 32), np.float32)
    with pytest.raises(exc, match="weighting must be None or 'magnitude'"):
        nbwoq.search_clip(w, weighting=value)


@SETTINGS
@given(problems())
def test_per_group_never_worse_than_per_tensor(problem):
    """Every group's error with its own ratio is at most its error with the tensor's ratio."""
    w, kw = problem
    pg = nbwoq.search_clip(w, per_group=True, **kw)
    if not np.isfinite(totals(w, **kw)).any():
        # Every candidate's scale under- or overflows (e.g. a lone 1e-45): nothing to pick.
        with pytest.raises(ValueError, match="no clip ratio gives a finite"):
            nbwoq.search_clip(w, **kw)
        return
    pt = nbwoq.search_clip(w, **kw)
    qkw = dict(bits=kw["bits"], group_size=kw["group_size"], scheme=kw["scheme"], dtype=kw["dtype"],
               full_range=kw["enable_full_range"])
    e_pg = group_errors_at(w, pg, **qkw)
    e_pt = group_errors_at(w, pt, **qkw)
    # A group without any finite candidate is NaN under both; a finite one stays finite.
    assert np.all(np.isfinite(e_pg) | np.isnan(e_pt))
    assert np.all((e_pg <= e_pt * (1 + NEAR_TIE) + 1e-300) | np.isnan(e_pt))


@pytest.mark.parametrize("fmt", [("int", "asym"), ("int", "sym"), ("nf4", "asym"), ("fp4", "asym")],
                         ids=["int4-asym", "int4-sym", "nf4", "fp4"])
def test_per_group_end_to_end(fmt):
    """quant_tensor(w, quantile=search_clip(w, per_group=True)) quantizes each group with
    its own clip: per group, the smallest error over the candidates."""
    dtype, scheme = fmt
    w = _weight(64, 200, seed=3)
    kw = dict(bits=4, group_size=32, scheme=scheme, dtype=dtype)
    q = nbwoq.search_clip(w, per_group=True, **kw)
    assert q.shape == (64, 7) and q.dtype == np.float32
    errors = naive_group_errors(w, DEFAULT, **kw)
    np.testing.assert_allclose(group_errors_at(w, q, **kw), errors.min(axis=0), rtol=NEAR_TIE, atol=0)
    total_pg = group_errors_at(w, q, **kw).sum()
    total_pt = group_errors_at(w, nbwoq.search_clip(w, **kw), **kw).sum()
    assert total_pg < total_pt
    out = nbwoq.quant_tensor(w.copy(), quantile=q, **kw)
    np.testing.assert_array_equal(out, fake_quant(w, q, **kw))
    _, scale, _ = nbwoq.quant_tensor(w.copy(), return_int=True, quantile=q, **kw)
    assert scale.shape == (64, 7)


@pytest.mark.parametrize("per_group", [False, True], ids=["per-tensor", "per-group"])
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=lambda d: np.dtype(d).name)
def test_same_answer_with_one_and_two_threads(per_group, dtype):
    w = _weight(300, 520, dtype, seed=5)  # 300 * 17 groups: many blocks, uneven split
    # Smaller calls run on the calling thread alone, which would make this test moot.
    assert w.size >= nbwoq._threads.SERIAL_BELOW
    kw = dict(bits=4, group_size=32, per_group=per_group)
    before = nbwoq.get_num_threads()
    try:
        nbwoq.set_num_threads(1)
        one = totals(w, **kw), nbwoq.search_clip(w, **kw)
        nbwoq.set_num_threads(min(2, before) if before > 1 else 1)
        two = totals(w, **kw), nbwoq.search_clip(w, **kw)
    finally:
        nbwoq.set_num_threads(before)
    if per_group:
        np.testing.assert_array_equal(one[0], two[0])
        np.testing.assert_array_equal(one[1], two[1])
    else:
        assert one == two  # the float64 totals too, bit for bit


def test_default_candidates_are_the_references():
    assert clip.candidates() == DEFAULT
    assert clip.candidates(40) == DEFAULT
    assert clip.candidates(1) == [1.0]
    assert clip.candidates(3) == [1 - i / 15 for i in range(3)]  # 1 - i / (5 n), n = 3
    assert clip.candidates(80)[::2] == DEFAULT  # a finer count keeps the coarse candidates
    assert clip.candidates([0.9, 1.0]) == [0.9, 1.0]


def test_finer_grid_is_never_worse():
    w = _weight(16, 256, seed=7)
    coarse = nbwoq.search_clip(w, bits=3, group_size=64)
    fine = nbwoq.search_clip(w, bits=3, group_size=64, grid=200)
    assert fine in clip.candidates(200)
    e = naive_group_errors(w, [coarse, fine], bits=3, group_size=64).sum(axis=(1, 2))
    assert e[1] <= e[0]


def test_explicit_grid_keeps_order_and_types():
    w = _weight(8, 64, seed=2)
    assert nbwoq.search_clip(w, grid=[0.9]) == 0.9
    r = nbwoq.search_clip(w, grid=np.array([0.7, 0.95, 0.85]))
    assert type(r) is float and r in (0.7, 0.95, 0.85)
    # Duplicates tie: the first one wins, so the answer is the same whatever follows.
    assert nbwoq.search_clip(w, grid=[0.95, 0.95, 0.5]) == 0.95
    pg = nbwoq.search_clip(w, grid=(1.0, 0.5), per_group=True)
    assert set(np.unique(pg).tolist()) <= {1.0, 0.5}


def test_bits_zero_or_less_keeps_the_first_candidate():
    w = _weight(4, 64)
    assert nbwoq.search_clip(w, bits=0) == 1.0
    assert nbwoq.search_clip(w, bits=-3, grid=[0.9, 0.8]) == 0.9
    np.testing.assert_array_equal(nbwoq.search_clip(w, bits=0, per_group=True), np.ones((4, 2), np.float32))


def test_empty_weights():
    assert nbwoq.search_clip(np.zeros((0, 64), np.float32)) == 1.0
    assert nbwoq.search_clip(np.zeros((3, 0), np.float32)) == 1.0
    assert nbwoq.search_clip(np.zeros((0, 64), np.float32), per_group=True).shape == (0, 2)


def test_all_zero_weight_picks_the_first():
    """Every candidate quantizes zeros exactly: a tie, so the first candidate."""
    assert nbwoq.search_clip(np.zeros((4, 64), np.float32)) == 1.0


def test_read_only_weight_is_accepted_and_untouched(path):
    w = _weight(32, 96, seed=9)
    w.setflags(write=False)
    before = w.tobytes()
    x = path.to_array(w)
    nbwoq.search_clip(x, bits=4, group_size=32)
    nbwoq.search_clip(x, bits=4, group_size=32, per_group=True)
    assert w.tobytes() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=lambda d: np.dtype(d).name)
def test_weight_untouched_numba_dtypes(dtype):
    w = _weight(16, 100, dtype, seed=4)
    before = w.tobytes()
    for per_group in (False, True):
        for scheme in ("asym", "sym"):
            nbwoq.search_clip(w, scheme=scheme, per_group=per_group)
    assert w.tobytes() == before


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("per_group", [False, True], ids=["per-tensor", "per-group"])
def test_non_finite_weight_raises_naming_the_row(path, bad, per_group):
    w = _weight(6, 70, seed=1)
    w[4, 66] = bad  # in the tail group
    w[5, 3] = bad
    before = w.tobytes()
    with pytest.raises(ValueError, match="first in row 4"):
        nbwoq.search_clip(path.to_array(w), per_group=per_group)
    assert w.tobytes() == before


def test_overflowing_range(path):
    """A finite weight whose range overflows float32 has no finite error for any ratio."""
    w = _weight(3, 64, seed=1)
    w[1, :32] = np.float32(3e38) * np.sign(w[1, :32])
    before = w.tobytes()
    x = path.to_array(w)
    with pytest.raises(ValueError, match="no clip ratio gives a finite"):
        nbwoq.search_clip(x)
    pg = np.asarray(nbwoq.search_clip(x, per_group=True))
    assert pg[1, 0] == 1.0  # no finite candidate: the first
    assert w.tobytes() == before


BAD_ARGUMENTS = [
    ("bits-float", dict(bits=4.0), TypeError, "bits must be an integer"),
    ("bits-17", dict(bits=17), ValueError, "bits must be at most 16"),
    ("group-size-0", dict(group_size=0), ValueError, "group_size must be -1 or a positive"),
    ("group-size--2", dict(group_size=-2), ValueError, "group_size must be -1 or a positive"),
    ("scheme", dict(scheme="asymm"), ValueError, "scheme must be one of"),
    ("dtype", dict(dtype="fp8_e4m3fn"), ValueError, "dtype must be one of"),
    ("full-range-int", dict(enable_full_range=1), TypeError, "enable_full_range must be True or False"),
    ("full-range-bits1", dict(bits=1, scheme="sym", enable_full_range=True), ValueError, "needs bits >= 2"),
    ("per-group-str", dict(per_group="yes"), TypeError, "per_group must be True or False"),
    ("grid-0", dict(grid=0), ValueError, "grid as a count must be an integer from 1 to"),
    ("grid-bool", dict(grid=True), TypeError, "grid must be None, a positive integer"),
    ("grid-str", dict(grid="fine"), TypeError, "grid must be None, a positive integer"),
    ("grid-float", dict(grid=0.9), TypeError, "grid must be None, a positive integer"),
    ("grid-empty", dict(grid=[]), ValueError, "at least one ratio"),
    ("grid-zero-ratio", dict(grid=[1.0, 0.0]), ValueError, r"grid values must be in \(0, 1\]"),
    ("grid-above-one", dict(grid=[1.5]), ValueError, r"grid values must be in \(0, 1\]"),
    ("grid-nan", dict(grid=[float("nan")]), ValueError, r"grid values must be in \(0, 1\]"),
    ("grid-2d", dict(grid=np.ones((2, 2))), ValueError, "grid as an array must be 1-D"),
    ("grid-str-item", dict(grid=["0.9"]), TypeError, "grid values must be a real number"),
]


@pytest.mark.parametrize("kwargs, exc, match", [b[1:] for b in BAD_ARGUMENTS], ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_raise_and_leave_weight(path, kwargs, exc, match):
    w = _weight(4, 64)
    before = w.tobytes()
    with pytest.raises(exc, match=match):
        nbwoq.search_clip(path.to_array(w), **kwargs)
    assert w.tobytes() == before


@pytest.mark.parametrize(
    "weight, exc, match",
    [
        (np.ones((2, 3, 4), np.float32), ValueError, "2-D"),
        (np.ones(8, np.float32), ValueError, "2-D"),
        (np.ones((2, 4), np.int32), TypeError, "weight must be a"),
        ([[1.0, 2.0]], TypeError, "weight must be an array"),
    ],
    ids=["3-d", "1-d", "int32", "list"],
)
def test_bad_weights_raise(weight, exc, match):
    with pytest.raises(exc, match=match):
        nbwoq.search_clip(weight)


def test_torch_tensors_take_the_reference_path():
    torch = pytest.importorskip("torch")
    w = _weight(16, 96, seed=8)
    t = torch.from_numpy(w.copy())
    assert nbwoq.search_clip(t, group_size=32) == nbwoq.search_clip(w, group_size=32)
    pg = nbwoq.search_clip(t, group_size=32, per_group=True)
    assert isinstance(pg, torch.Tensor) and pg.dtype == torch.float32
    np.testing.assert_array_equal(pg.numpy(), nbwoq.search_clip(w, group_size=32, per_group=True))
    # bfloat16 on the reference path rounds the stored values the way the kernel does.
    b = w.astype(BF16)
    tb = torch.from_numpy(b.astype(np.float32)).to(torch.bfloat16)
    np.testing.assert_allclose(totals(tb), totals(b), rtol=TOTAL_RTOL)


def test_rowwise_functions_take_per_row_ratios():
    """With group_size=-1 the per-group answer has one ratio per row, shape (rows, 1):
    qdq_weight_asym/sym and quantize_4bit take it as their quantile, like quant_tensor."""
    w = _weight(6, 50, seed=11)
    for func, kw in ((nbwoq.qdq_weight_asym, dict(scheme="asym")), (nbwoq.qdq_weight_sym, dict(scheme="sym")),
                     (nbwoq.quantize_4bit, dict(dtype="nf4"))):
        q = nbwoq.search_clip(w, group_size=-1, per_group=True, **kw)
        assert q.shape == (6, 1)
        rowwise = func(w.copy(), quantile=q, **({"dtype": "nf4"} if func is nbwoq.quantize_4bit else {}))
        np.testing.assert_array_equal(rowwise, nbwoq.quant_tensor(w.copy(), group_size=-1, quantile=q, **kw))


def test_sixteen_bits():
    w = _weight(4, 64, seed=12)
    for scheme in ("asym", "sym"):
        ratio = nbwoq.search_clip(w, bits=16, scheme=scheme)
        errors = naive_group_errors(w, DEFAULT, bits=16, group_size=32, scheme=scheme).sum(axis=(1, 2))
        assert errors[DEFAULT.index(ratio)] <= errors.min() * (1 + TOTAL_RTOL)
