"""quantize_model(method="sinq") on real architectures built offline from tiny configs.

The fold alone must leave the float model's logits as they were (float32 rounding);
quantizing must give every layer that no group reaches plain round to nearest, bit for
bit, and every reached layer the round to nearest of its folded weight.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nbwoq  # noqa: E402
import nbwoq_torch  # noqa: E402
from nbwoq_torch import _sinq  # noqa: E402
from tiny_causal_lm import SMALL, build  # noqa: E402

MODELS = ("llama", "qwen3", "qwen2")
SETTING = dict(bits=4, group_size=32, scheme="asym")


def _build(name):
    return build(name, spread_columns=True)


def _logits(model):
    ids = torch.arange(24).reshape(2, 12) % SMALL["vocab_size"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def _linear_weights(model):
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("traced", [False, True], ids=["names", "graph"])
def test_fold_leaves_the_float_model_unchanged(name, traced):
    model = _build(name)
    before = _logits(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.arange(8)[None, :] if traced else None
    plan = _sinq.resolve_plan(model, None, example)
    groups = _sinq.foldable_groups(model, plan, _linear_weights(model))
    kinds = {g.feeder.split(".")[-2] for g in groups}
    assert {"input_layernorm", "post_attention_layernorm", "up_proj", "v_proj"} <= kinds
    scales = _sinq.fold_sinq(model, groups, SETTING, "magnitude")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])]
    assert any("q_proj" in k for k in changed) and any("input_layernorm" in k for k in changed)
    assert any(np.any(col != 1.0) for _, col in scales.values() if col is not None)
    torch.testing.assert_close(_logits(model), before, rtol=2e-4, atol=2e-4)


def test_row_only_layers_get_plain_rtn_and_folded_ones_their_rtn():
    model = _build("llama")
    plan = _sinq.resolve_plan(model, None, None)
    # only the norm groups: o_proj and down_proj have no partner
    plan = plan._replace(groups=tuple(g for g in plan.groups if g.absorb == "norm"))
    reference = _build("llama")
    report = nbwoq_torch.quantize_model(model, **SETTING, method="sinq", plan=plan)
    assert [r["method"] for r in report] == ["sinq"] * len(report)
    params = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            expect = nbwoq_torch.quant_tensor(p.detach().clone(), **SETTING)
            torch.testing.assert_close(params[name], expect, rtol=0, atol=0)
    # the folded layers hold round to nearest of their folded weights: 16 levels per group
    q = params["model.layers.0.self_attn.q_proj.weight"]
    assert len(torch.unique(q[0, :32])) <= 16
    by = {r["name"]: r for r in report}
    q_report = by["model.layers.0.self_attn.q_proj"]
    assert q_report["error"] != q_report["rtn_error"]
    assert sum(r["error"] for r in report) < sum(r["rtn_error"] for r in report)


def test_name_plan_is_the_default_for_a_known_family():
    model = _build("qwen3")
    report = nbwoq_torch.quantize_model(model, **SETTING, method="sinq")
    assert len(report) == 14
    assert sum(r["error"] for r in report) < sum(r["rtn_error"] for r in report)


def test_bad_plans_and_arguments_change_nothing():
    model = _build("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _sinq.resolve_plan(model, None, None)
    bad_name = plan._replace(groups=(plan.groups[0]._replace(feeder="model.nothing.weight"),))
    bad_shape = plan._replace(groups=(plan.groups[0]._replace(repeat=2, block=8),))
    for kwargs, error in [(dict(plan=bad_name), ValueError), (dict(plan=bad_shape), ValueError),
                          (dict(plan="plan"), TypeError), (dict(method="rtn", plan=plan), ValueError),
                          (dict(weighting="square"), ValueError)]:
        kwargs = {"method": "sinq", **kwargs}
        with pytest.raises(error):
            nbwoq_torch.quantize_model(model, **SETTING, **kwargs)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="absorption plan"):
        nbwoq_torch.quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), method="sinq")
    assert isinstance(nbwoq.AbsorbPlan((), ()), nbwoq.AbsorbPlan)


@pytest.mark.parametrize("change", [dict(block=12), dict(block=0), dict(repeat=2.0), dict(consumers=()),
                                    dict(absorb="cols")], ids=["heads", "no-block", "float", "empty", "kind"])
def test_a_bad_later_group_changes_nothing(change):
    """Each group is checked before the first fold: a plan whose last group
    ``dual_scale`` or ``fold_column_scale`` would refuse leaves the earlier ones unfolded."""
    model = _build("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _sinq.resolve_plan(model, None, None)
    rows = next(g for g in plan.groups if g.absorb == "rows" and g.repeat == 2)
    bad = plan._replace(groups=tuple(g for g in plan.groups if g is not rows) + (rows._replace(**change),))
    with pytest.raises((ValueError, TypeError), match="plan"):
        nbwoq_torch.quantize_model(model, **SETTING, method="sinq", plan=bad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_fold_that_would_overflow_a_half_is_skipped(monkeypatch):
    """float16 holds at most 65504: a feeder of 30000 times a scale of 4 would become
    inf and silently break the float model; that group stays unfolded instead."""
    from nbwoq.dual import DualScale

    model = torch.nn.Sequential(torch.nn.Linear(32, 32, bias=False), torch.nn.Linear(32, 16, bias=False)).half()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[3, :] = 30000.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    group = nbwoq.AbsorbGroup("0.weight", "rows", ("1.weight",))
    monkeypatch.setattr(_sinq, "dual_scale", lambda arrays, **kw: DualScale(np.full(32, 4.0), np.ones(32), 0.0, 1.0))
    assert _sinq.fold_sinq(model, [group], SETTING, "magnitude") == {}
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        model[0].weight[3, :] = 1.0
    scales = _sinq.fold_sinq(model, [group], SETTING, "magnitude")
    assert set(scales) == {"0.weight", "1.weight"}
    assert torch.all(model[0].weight == 4.0)


def test_activation_aware_fold_keeps_the_float_model():
    """Input moments from random token ids weight the search and set its direction; the
    fold is still exact, and the result differs from the weights-only one."""
    model = _build("llama")
    before = _logits(model)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 32), generator=torch.Generator().manual_seed(0))
    plan = _sinq.resolve_plan(model, None, None)
    groups = _sinq.foldable_groups(model, plan, _linear_weights(model))
    consumers = {c for g in groups for c in g.consumers}
    moments = _sinq.input_moments(model, sorted(consumers), ids)
    assert set(moments) == consumers
    assert all(m.shape == (model.get_parameter(n).shape[1],) and np.all(m >= 0) for n, m in moments.items())
    scales = _sinq.fold_sinq(model, groups, SETTING, "magnitude", moments)
    torch.testing.assert_close(_logits(model), before, rtol=2e-4, atol=2e-4)
    plain = _build("llama")
    plain_scales = _sinq.fold_sinq(plain, groups, SETTING, "magnitude")
    assert any(not np.array_equal(scales[k][1], plain_scales[k][1]) for k in scales if scales[k][1] is not None)
    aware = _build("llama")
    report = nbwoq_torch.quantize_model(aware, **SETTING, method="sinq", example_inputs=ids, activation_aware=True)
    assert len(report) == 14
    for kwargs in (dict(method="sinq", activation_aware=True), dict(method="rtn", activation_aware=True),
                   dict(method="sinq", activation_aware=1)):
        with pytest.raises((ValueError, TypeError)):
            nbwoq_torch.quantize_model(_build("llama"), **SETTING, **kwargs)
