"""The column-scale fold on arrays (``nbwoq.absorb``): the function a model computes is
unchanged, for every way a feeder absorbs, with and without grouped-query attention.

Each property compares what the consumers compute from the feeder's output before and
after the fold, written out here with plain NumPy (the head map by explicit indices, not
by ``consumer_scale``).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbwoq import AbsorbGroup, AbsorbPlan, fold_column_scale
from nbwoq.absorb import consumer_scale, make_plan, natural_key

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _head_map(channels, repeat, block):
    """Consumer column -> feeder channel, by the attention layout: query head ``h`` reads
    key/value head ``h // repeat``."""
    if repeat == 1:
        return np.arange(channels)
    cols = channels * repeat
    heads = np.arange(cols) // block
    return (heads // repeat) * block + np.arange(cols) % block


@st.composite
def _case(draw):
    kind = draw(st.sampled_from(["norm", "norm_plus_one", "rows"]))
    repeat, block = 1, 0
    if kind == "rows" and draw(st.booleans()):
        repeat, block = draw(st.integers(2, 4)), draw(st.integers(1, 4))
        channels = block * draw(st.integers(1, 3))
    else:
        channels = draw(st.integers(1, 12))
    n_consumers = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return kind, channels, repeat, block, n_consumers, bias, seed


def _arrays(kind, channels, repeat, n_consumers, bias, seed):
    rng = np.random.default_rng(seed)
    inner = 5
    feeder = rng.standard_normal((channels, inner) if kind == "rows" else channels)
    consumers = [rng.standard_normal((3, channels * repeat)) for _ in range(n_consumers)]
    b = rng.standard_normal(channels) if bias else None
    scale = np.exp(rng.uniform(-2, 2, channels))
    x = rng.standard_normal((4, inner if kind == "rows" else channels))
    return feeder, consumers, b, scale, x


def _outputs(kind, feeder, consumers, bias, x, head_map):
    if kind == "rows":
        y = x @ feeder.T
    elif kind == "norm":
        y = x * feeder
    else:
        y = x * (1.0 + feeder)
    if bias is not None:
        y = y + bias
    return [y[:, head_map] @ c.T for c in consumers]


@SETTINGS
@given(_case())
def test_the_fold_keeps_what_the_consumers_compute(case):
    kind, channels, repeat, block, n_consumers, bias, seed = case
    feeder, consumers, b, scale, x = _arrays(kind, channels, repeat, n_consumers, bias, seed)
    group = AbsorbGroup("f", kind, tuple(f"c{i}" for i in range(n_consumers)), "fb" if bias else None, repeat, block)
    snapshot = [a.copy() for a in [feeder, *consumers, scale] + ([b] if bias else [])]
    new_feeder, new_consumers, new_bias = fold_column_scale(group, scale, feeder, consumers, b)
    head_map = _head_map(channels, repeat, block)
    before = _outputs(kind, feeder, consumers, b, x, head_map)
    after = _outputs(kind, new_feeder, new_consumers, new_bias, x, head_map)
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # The inputs are left as they were; each result has its input's dtype.
    for old, now in zip(snapshot, [feeder, *consumers, scale] + ([b] if bias else [])):
        np.testing.assert_array_equal(old, now)
    assert new_feeder.dtype == feeder.dtype and (new_bias is None) == (b is None)


@SETTINGS
@given(_case())
def test_the_feeder_output_is_scaled_and_the_consumer_columns_divided(case):
    kind, channels, repeat, block, n_consumers, bias, seed = case
    feeder, consumers, b, scale, x = _arrays(kind, channels, repeat, n_consumers, bias, seed)
    group = AbsorbGroup("f", kind, tuple(f"c{i}" for i in range(n_consumers)), "fb" if bias else None, repeat, block)
    new_feeder, new_consumers, new_bias = fold_column_scale(group, scale, feeder, consumers, b)
    effective = {"rows": lambda w: w, "norm": lambda w: w, "norm_plus_one": lambda w: 1.0 + w}[kind]
    s = scale[:, None] if kind == "rows" else scale
    np.testing.assert_allclose(effective(new_feeder), effective(feeder) * s, rtol=1e-12)
    head_map = _head_map(channels, repeat, block)
    for old, new in zip(consumers, new_consumers):
        np.testing.assert_allclose(new * scale[head_map], old, rtol=1e-12)
    if bias:
        np.testing.assert_allclose(new_bias, b * scale, rtol=1e-12)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_consumer_scale_is_the_head_map(repeat, block, kv_heads):
    channels = kv_heads * block
    scale = np.arange(1, channels + 1, dtype=np.float64)
    group = AbsorbGroup("v", "rows", ("o",), None, repeat, block if repeat > 1 else 0)
    np.testing.assert_array_equal(consumer_scale(group, scale), scale[_head_map(channels, repeat, block)])


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_each_result_is_rounded_once_to_its_dtype(dtype):
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    rng = np.random.default_rng(1)
    feeder = rng.standard_normal((6, 4)).astype(dtype)
    consumer = rng.standard_normal((3, 6)).astype(dtype)
    scale = np.exp(rng.uniform(-1, 1, 6))
    group = AbsorbGroup("f", "rows", ("c",))
    new_feeder, (new_consumer,), _ = fold_column_scale(group, scale, feeder, [consumer])
    assert new_feeder.dtype == feeder.dtype and new_consumer.dtype == consumer.dtype
    np.testing.assert_array_equal(new_feeder, (feeder.astype(np.float64) * scale[:, None]).astype(dtype))
    np.testing.assert_array_equal(new_consumer, (consumer.astype(np.float64) / scale).astype(dtype))


def test_a_unit_scale_changes_nothing():
    rng = np.random.default_rng(2)
    feeder, consumer = rng.standard_normal(8).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    new_feeder, (new_consumer,), _ = fold_column_scale(AbsorbGroup("n", "norm", ("c",)), np.ones(8), feeder,
                                                       [consumer])
    np.testing.assert_array_equal(new_feeder, feeder)
    np.testing.assert_array_equal(new_consumer, consumer)


def _good():
    group = AbsorbGroup("v", "rows", ("o",), "vb", 2, 2)
    return dict(group=group, scale=np.ones(4), feeder=np.ones((4, 3)), consumers=[np.ones((5, 8))],
                feeder_bias=np.ones(4))


@pytest.mark.parametrize("change, error, message", [
    (dict(group=("v", "rows", ("o",))), TypeError, "AbsorbGroup"),
    (dict(group=AbsorbGroup("v", "columns", ("o",))), ValueError, "group.absorb"),
    (dict(group=AbsorbGroup("v", "rows", ("o",), "vb", 2, 0)), ValueError, "group.block"),
    (dict(group=AbsorbGroup("v", "rows", ("o",), "vb", 1, 2)), ValueError, "group.block"),
    (dict(group=AbsorbGroup("v", "rows", ("o",), "vb", 2, 3)), ValueError, "whole number of heads"),
    (dict(scale=[1.0] * 4), TypeError, "scale must be a NumPy array"),
    (dict(scale=np.ones((4, 1))), ValueError, "1-D"),
    (dict(scale=np.ones(3)), ValueError, "one value per feeder channel"),
    (dict(scale=np.array([1.0, 0.0, 1.0, 1.0])), ValueError, "finite and positive"),
    (dict(scale=np.array([1.0, -1.0, 1.0, 1.0])), ValueError, "finite and positive"),
    (dict(scale=np.array([1.0, np.nan, 1.0, 1.0])), ValueError, "finite and positive"),
    (dict(feeder=np.ones(4)), ValueError, "feeder must be a 2-D"),
    (dict(feeder=np.ones((4, 3), dtype=np.int32)), ValueError, "feeder must be a 2-D"),
    (dict(consumers=np.ones((5, 8))), TypeError, "list or tuple"),
    (dict(consumers=[np.ones((5, 8))] * 2), ValueError, "1 consumers, got 2"),
    (dict(consumers=[np.ones((5, 4))]), ValueError, "8 columns"),
    (dict(feeder_bias=None), ValueError, "feeder_bias"),
    (dict(feeder_bias=np.ones(3)), ValueError, "feeder_bias must have 4"),
])
def test_bad_arguments_raise(change, error, message):
    kwargs = {**_good(), **change}
    with pytest.raises(error, match=message):
        fold_column_scale(**kwargs)


def test_the_good_arguments_above_fold():
    new_feeder, (new_consumer,), new_bias = fold_column_scale(**_good())
    assert new_feeder.shape == (4, 3) and new_consumer.shape == (5, 8) and new_bias.shape == (4,)


def test_plans_are_canonical():
    groups = [AbsorbGroup("layers.10.n", "norm", ("layers.10.b", "layers.10.a")),
              AbsorbGroup("layers.2.n", "norm", ("layers.2.a",))]
    plan = make_plan(groups, ["layers.10.a", "layers.10.b", "layers.2.a", "layers.2.z", "layers.10.z"])
    assert isinstance(plan, AbsorbPlan)
    assert [g.feeder for g in plan.groups] == ["layers.2.n", "layers.10.n"]
    assert plan.groups[1].consumers == ("layers.10.a", "layers.10.b")
    assert plan.row_only == ("layers.2.z", "layers.10.z")
    assert plan.group_of("layers.10.b") is plan.groups[1] and plan.group_of("layers.2.z") is None
    assert sorted(["b.10", "b.9", "a.100"], key=natural_key) == ["a.100", "b.9", "b.10"]
