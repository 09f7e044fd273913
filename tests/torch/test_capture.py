"""Capture utilities: INC parity on the recorded cases, and SPEC deviation 6 (errors are never hidden)."""

import collections

import pytest

torch = pytest.importorskip("torch")

from nbwoq_torch import (  # noqa: E402
    BlockInputs,
    capture_block_inputs,
    capture_module_io,
    forward_wrapper,
    get_example_input,
    get_module_input_output,
    model_forward,
    move_input_to_device,
    recover_forward,
    replace_forward,
)

nn = torch.nn


def _records_as_descriptions(record, describe):
    """nbwoq's get_module_input_output result in the reference file's notation."""
    return {name: {kind: [describe(t) for t in values] for kind, values in kinds.items()} for name, kinds in record.items()}


def _all_hooks(model):
    return [hook for module in model.modules() for hook in module._forward_hooks.values()]


# -- get_module_input_output --------------------------------------------------------------

# How each recorded calibration was run, keyed by the reference file's own
# description of it (a new description fails test_every_record_is_covered).
DATALOADERS = {
    "list of 3 (input (3,16), label (3,)) tuples": lambda: [(torch.randn(3, 16), torch.randn(3)) for _ in range(3)],
    "list of 3 plain tensors (3,16)": lambda: [torch.randn(3, 16) for _ in range(3)],
    "list of 3 plain tensors (2,16)": lambda: [torch.randn(2, 16) for _ in range(3)],
    "3 pairs (3,16)": lambda: [(torch.randn(3, 16), torch.randn(3)) for _ in range(3)],
    "2 pairs (input_ids (2,8) int64, None)": lambda: [(torch.randint(0, 50, (2, 8)), None) for _ in range(2)],
    "2 dicts {input_ids (2,8), attention_mask (2,8)}": lambda: [
        {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
        for _ in range(2)
    ],
}


def _calib_x_then_first_row(model):
    x = torch.randn(4, 16)
    model(x)
    model(x[:1])


CALIB_FUNCS = {"m(x (4,16)); m(x[:1])": _calib_x_then_first_row}
TRANSFORMS = {"t.mean(0)": lambda t: t.mean(0), "t[:1]": lambda t: t[:1]}

# Records where nbwoq deliberately differs (SPEC deviation 6), by dataloader / note.
SPLIT_TENSOR_BATCH = "list of 3 plain tensors (2,16)"
OUTPUT_HOOK_WITH_INPUT_FUNC = "output-only hook together with input_func"


def _run_record(record, structural_models):
    model, _ = structural_models.BUILDERS[record["model"]]()
    kwargs = {}
    if "dataloader" in record:
        kwargs["dataloader"] = DATALOADERS[record["dataloader"]]()
    if "calib_func" in record:
        kwargs["calib_func"] = CALIB_FUNCS[record["calib_func"]]
    if "iters" in record:
        kwargs["iters"] = record["iters"]
    for name in ("input_func", "output_func"):
        if name in record:
            kwargs[name] = TRANSFORMS[record[name]]
    with torch.no_grad():
        return model, get_module_input_output(model, record["module_hook_config"], **kwargs)


def _deviates(record):
    return record.get("dataloader") == SPLIT_TENSOR_BATCH or record.get("note") == OUTPUT_HOOK_WITH_INPUT_FUNC


def _io_cases(reference):
    # The two records where nbwoq deliberately differs have their own tests below.
    records = enumerate(reference["get_module_input_output"])
    return [pytest.param(i, id=f"{r['model']}-{i}") for i, r in records if not _deviates(r)]


def _load_reference():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "golden" / "structural" / "structural_reference.json"
    return json.loads(path.read_text())


REFERENCE = _load_reference()


class TestModuleInputOutputParity:
    def test_every_record_is_covered(self, structural_reference):
        assert sum(_deviates(r) for r in structural_reference["get_module_input_output"]) == 2
        for record in structural_reference["get_module_input_output"]:
            assert record.get("dataloader") in DATALOADERS or record.get("calib_func") in CALIB_FUNCS
            for name in ("input_func", "output_func"):
                assert record.get(name, "t.mean(0)") in TRANSFORMS

    @pytest.mark.parametrize("index", _io_cases(REFERENCE))
    def test_record(self, index, structural_reference, structural_models, describe):
        record = structural_reference["get_module_input_output"][index]
        model, result = _run_record(record, structural_models)
        assert _records_as_descriptions(result, describe) == record["result"]
        if "result_key_order" in record:
            assert list(result) == record["result_key_order"]
        assert _all_hooks(model) == []

    def test_tensor_batch_is_never_split(self, structural_reference, structural_models, describe):
        # Deviation 6: the reference unpacks a (2, 16) batch as (input, label) =
        # (x[0], x[1]) and feeds 1-D rows (recorded: inputs of shape [16]).
        # nbwoq treats only a 2-item tuple or list as a pair, so the model sees
        # each whole batch: Linear(16, 32) gets (2, 16) and returns (2, 32).
        record = next(
            r for r in structural_reference["get_module_input_output"] if r.get("dataloader") == SPLIT_TENSOR_BATCH
        )
        assert record["result"]["0"]["input"][0] == {"tensor": {"shape": [16], "dtype": "float32"}}
        _, result = _run_record(record, structural_models)
        assert _records_as_descriptions(result, describe) == {
            "0": {
                "input": [{"tensor": {"shape": [2, 16], "dtype": "float32"}}] * 3,
                "output": [{"tensor": {"shape": [2, 32], "dtype": "float32"}}] * 3,
            }
        }

    def test_output_hook_ignores_input_func(self, structural_reference, structural_models, describe):
        # Deviation 6: the reference's hook applies input_func to an unset
        # variable when only "output" is recorded; the error is swallowed and
        # resurfaces as a TypeError from the retried calibration (recorded).
        # nbwoq applies input_func to inputs only, so the outputs of Linear
        # "3" (32 features, batches of 3) are recorded unchanged.
        record = next(
            r for r in structural_reference["get_module_input_output"] if r.get("note") == OUTPUT_HOOK_WITH_INPUT_FUNC
        )
        assert record["result"]["error"]["type"] == "TypeError"
        _, result = _run_record(record, structural_models)
        assert _records_as_descriptions(result, describe) == {
            "3": {"output": [{"tensor": {"shape": [3, 32], "dtype": "float32"}}] * 3}
        }


class TestModuleInputOutputErrors:
    def test_hooks_removed_when_calibration_raises(self, structural_models):
        model, _ = structural_models.build_toy_sequential()

        def failing_calibration(m):
            m(torch.randn(2, 16))
            raise RuntimeError("calibration failed")

        with pytest.raises(RuntimeError, match="calibration failed"):
            get_module_input_output(model, {"0": ["input"], "3": ["output"]}, calib_func=failing_calibration)
        assert _all_hooks(model) == []

    def test_hooks_removed_when_model_raises(self, structural_models):
        model, _ = structural_models.build_toy_sequential()
        with pytest.raises(RuntimeError):
            # Wrong feature size: Linear(16, 32) cannot take 5 features.
            get_module_input_output(model, {"0": ["input"]}, dataloader=[(torch.randn(3, 5), None)])
        assert _all_hooks(model) == []

    def test_context_manager_removes_hooks_on_error(self, structural_models):
        model, x = structural_models.build_toy_sequential()
        with pytest.raises(KeyError):
            with capture_module_io(model, {"5": ["output"]}) as record:
                model(x)
                raise KeyError("inside the block")
        assert _all_hooks(model) == []
        assert [t.shape for t in record["5"]["output"]] == [torch.Size([2, 24])]

    def test_unknown_module_name(self, structural_models):
        # The reference ignores a name it cannot find and records nothing.
        model, _ = structural_models.build_toy_transformer()
        with pytest.raises(AttributeError, match="no attribute 'q_prj'"):
            get_module_input_output(model, {"layers.0.q_prj": ["input"]}, dataloader=[])
        assert _all_hooks(model) == []

    @pytest.mark.parametrize("kinds", [["inputs"], ["input", "grad"]])
    def test_unknown_kind(self, kinds, structural_models):
        model, _ = structural_models.build_toy_sequential()
        with pytest.raises(ValueError, match="may hold 'input' and 'output'"):
            get_module_input_output(model, {"0": kinds}, dataloader=[])

    def test_name_of_a_parameter(self, structural_models):
        model, _ = structural_models.build_toy_sequential()
        with pytest.raises(TypeError, match="not a module"):
            get_module_input_output(model, {"0.weight": ["input"]}, dataloader=[])

    def test_needs_dataloader_or_calib_func(self, structural_models):
        model, _ = structural_models.build_toy_sequential()
        with pytest.raises(ValueError, match="dataloader or a calib_func"):
            get_module_input_output(model, {"0": ["input"]})

    def test_config_must_be_a_dict(self, structural_models):
        model, _ = structural_models.build_toy_sequential()
        with pytest.raises(TypeError, match="module_hook_config must be a dict"):
            get_module_input_output(model, [("0", ["input"])], dataloader=[])

    def test_keyword_only_call_records_first_keyword(self):
        class Takes(nn.Module):
            def forward(self, hidden, scale=1.0):
                return hidden * scale

        model = nn.Module()
        model.inner = Takes()
        hidden = torch.randn(2, 3)
        with capture_module_io(model, {"inner": ["input", "output"]}) as record:
            model.inner(hidden=hidden, scale=2.0)
        assert record["inner"]["input"][0] is hidden
        assert torch.equal(record["inner"]["output"][0], hidden * 2.0)

    def test_module_that_never_runs_has_empty_lists(self, structural_models):
        model, x = structural_models.build_toy_sequential()
        with capture_module_io(model, {"0": "output"}) as record:
            pass
        assert record == {"0": {"output": []}}


# -- replace_forward / recover_forward ----------------------------------------------------


def _rf_cases(reference):
    return [pytest.param(i, id=r["model"]) for i, r in enumerate(reference["replace_forward_recover_forward"])]


@pytest.mark.parametrize("index", _rf_cases(REFERENCE))
def test_replace_forward_matches_reference(index, structural_reference, structural_models, describe, build_from_description):
    record = structural_reference["replace_forward_recover_forward"][index]
    model, _ = structural_models.BUILDERS[record["model"]]()
    calls = [(build_from_description(c["args"]), build_from_description(c["kwargs"])) for c in record["calls"]]
    first_block = model.layers[0] if hasattr(model, "layers") else model.decoder.layers[0]
    model_keys, block_keys = set(model.__dict__), set(first_block.__dict__)
    with torch.no_grad():
        before = [model(*args, **kwargs) for args, kwargs in calls]
        assert (replace_forward(model) is model) is record["replace_forward_returns_same_object"]
        returned = [model(*args, **kwargs) for args, kwargs in calls]
        assert returned == [c["returned"] for c in record["calls"]]
        assert [describe(args) for args in model.total_block_args] == record["total_block_args"]
        assert [describe(kwargs) for kwargs in model.total_block_kwargs] == record["total_block_kwargs"]
        assert [sorted(kwargs) for kwargs in model.total_block_kwargs] == record["total_block_kwargs_keys"]
        recover_forward(model)
        after = [model(*args, **kwargs) for args, kwargs in calls]
    assert all(torch.equal(a, b) for a, b in zip(before, after)) is record["after_recover_output_matches"]
    # Deviation 6: the reference leaves forward_orig on the model and the block
    # and `forward` as an instance attribute (recorded True); nbwoq keeps only
    # the captured lists.
    assert "forward_orig" in record["after_recover_attrs_left"]
    assert sorted(set(model.__dict__) - model_keys) == ["total_block_args", "total_block_kwargs"]
    assert "forward" not in model.__dict__
    assert set(first_block.__dict__) == block_keys


class StopsEarly(nn.Module):
    """Blocks behind an embedding that can raise a genuine ValueError."""

    def __init__(self, swallow_errors=False):
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.swallow_errors = swallow_errors
        self.layers_run = 0

    def forward(self, x, fail=False):
        if fail:
            raise ValueError("genuine model error")
        h = self.embed(x)
        for layer in self.layers:
            if self.swallow_errors:
                try:
                    h = layer(h)
                except Exception:  # the kind of model code that must not eat the stop
                    pass
            else:
                h = layer(h)
            self.layers_run += 1
        return h


class TestReplaceForward:
    def test_genuine_value_error_propagates(self):
        # Deviation 6: the reference stops with ValueError and so swallows it.
        model = replace_forward(StopsEarly())
        with pytest.raises(ValueError, match="genuine model error"):
            model(torch.randn(2, 4), fail=True)
        assert model.total_block_args == []
        recover_forward(model)

    def test_stop_is_not_swallowed_by_model_code(self):
        model = replace_forward(StopsEarly(swallow_errors=True))
        assert model(torch.randn(2, 4)) is None
        assert model.layers_run == 0
        assert len(model.total_block_args) == 1
        recover_forward(model)

    def test_records_embedding_output(self):
        model = StopsEarly()
        x = torch.randn(3, 4)
        with torch.no_grad():
            replace_forward(model)
            model(x)
            recover_forward(model)
            assert torch.equal(model.total_block_args[0][0], model.embed(x))
        assert model.total_block_kwargs == [{}]

    def test_no_stray_attributes(self):
        model = StopsEarly()
        model_dict, block_dict = dict(model.__dict__), dict(model.layers[0].__dict__)
        recover_forward(replace_forward(model))
        assert set(model.__dict__) - set(model_dict) == {"total_block_args", "total_block_kwargs"}
        assert model.layers[0].__dict__.keys() == block_dict.keys()
        assert type(model).forward is StopsEarly.forward and "forward" not in model.__dict__

    def test_instance_forward_is_restored(self):
        # accelerate and similar hooks replace forward on the instance.
        model = StopsEarly()
        custom = model.forward
        model.forward = custom
        model.layers[0].forward = model.layers[0].forward
        block_forward = model.layers[0].__dict__["forward"]
        recover_forward(replace_forward(model))
        assert model.__dict__["forward"] is custom
        assert model.layers[0].__dict__["forward"] is block_forward

    def test_twice_is_an_error(self):
        model = replace_forward(StopsEarly())
        with pytest.raises(RuntimeError, match="already in effect"):
            replace_forward(model)
        recover_forward(model)
        with pytest.raises(RuntimeError, match="not in effect"):
            recover_forward(model)

    def test_model_without_blocks(self, structural_models):
        model, _ = structural_models.build_toy_sequential()
        with pytest.raises(ValueError, match="no torch.nn.ModuleList"):
            replace_forward(model)
        assert "total_block_args" not in model.__dict__


class TestCaptureBlockInputs:
    def test_replay_reproduces_block_output(self, structural_models):
        model, ids = structural_models.build_toy_transformer()
        mask = torch.ones(2, 8, dtype=torch.int64)
        mask[1, 5:] = 0
        with torch.no_grad():
            with capture_module_io(model, {"layers.0": ["output"]}) as record:
                model(ids, attention_mask=mask)
            with capture_block_inputs(model) as captured:
                assert model(ids, attention_mask=mask) is None
            ((args, kwargs),) = list(captured)
            replayed = model.layers[0](*args, **kwargs)[0]
        assert torch.equal(replayed, record["layers.0"]["output"][0])
        assert sorted(kwargs) == ["attention_mask", "position_ids"]

    def test_model_restored_when_forward_raises(self):
        model = StopsEarly()
        before = dict(model.__dict__)
        with pytest.raises(ValueError, match="genuine"):
            with capture_block_inputs(model) as captured:
                model(torch.randn(1, 4))
                model(torch.randn(1, 4), fail=True)
        assert len(captured) == 1
        assert model.__dict__.keys() == before.keys()
        assert model(torch.randn(1, 4)).shape == (1, 4)

    def test_previous_captures_are_kept(self):
        model = StopsEarly()
        replace_forward(model)
        model(torch.randn(1, 4))
        recover_forward(model)
        earlier = model.total_block_args
        with capture_block_inputs(model) as captured:
            model(torch.randn(5, 4))
        assert model.total_block_args is earlier and len(earlier) == 1
        assert isinstance(captured, BlockInputs) and captured.args[0][0].shape == (5, 4)


# -- batches: model_forward, forward_wrapper, move_input_to_device, get_example_input -----------


class Recorder(nn.Module):
    """Records how it was called."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append({"args": list(args), "kwargs": kwargs})


MODEL_FORWARD_LOADERS = {
    "pairs_iters2": (lambda: [(torch.randn(2), torch.tensor(k)) for k in range(3)], 2),
    "plain_len3_iters-1": (lambda: [torch.randn(3) for _ in range(3)], -1),
    "dict_1key_iters-1": (lambda: [{"a": torch.randn(1)} for _ in range(2)], -1),
    "tuple_input_label": (lambda: [((torch.randn(1), torch.randn(2)), torch.tensor(0))], -1),
}


def test_model_forward_calls_match_reference(structural_reference, describe):
    records = structural_reference["model_forward_calls_seen_by_model"]
    assert set(records) == set(MODEL_FORWARD_LOADERS)
    for name, (loader, iters) in MODEL_FORWARD_LOADERS.items():
        model = Recorder()
        model_forward(model, loader(), iters, "cpu")
        seen = [{"args": describe(c["args"]), "kwargs": describe(c["kwargs"])} for c in model.calls]
        assert seen == records[name], name


class TestModelForward:
    def test_model_error_is_not_retried(self):
        # Deviation 6: the reference restarts the whole loop treating batches
        # as bare inputs after any error, running the model again.
        calls = []

        class Failing(nn.Module):
            def forward(self, x):
                calls.append(x)
                raise ValueError("model failed")

        with pytest.raises(ValueError, match="model failed"):
            model_forward(Failing(), [(torch.randn(2), 0), (torch.randn(2), 1)], -1, "cpu")
        assert len(calls) == 1

    @pytest.mark.parametrize("iters", [0, -2, 1.5, True])
    def test_bad_iters(self, iters):
        with pytest.raises(ValueError, match="iters must be -1"):
            model_forward(Recorder(), [torch.randn(2)], iters, "cpu")

    def test_iters_limits_batches(self):
        model = Recorder()
        model_forward(model, [torch.randn(2)] * 5, 3, "cpu")
        assert len(model.calls) == 3


FORWARD_WRAPPER_CASES = {
    "tensor": ("toy_sequential", lambda x: x),
    "tuple_of_one": ("toy_sequential", lambda x: (x,)),
    "list_of_one": ("toy_sequential", lambda x: [x]),
    "dict_input_ids": ("toy_transformer", lambda x: {"input_ids": x}),
    "tuple_of_two_falls_back_to_model(input)": ("toy_sequential", lambda x: (x, x)),
}


def test_forward_wrapper_matches_reference(structural_reference, structural_models, describe):
    records = structural_reference["forward_wrapper"]
    assert set(records) == set(FORWARD_WRAPPER_CASES)
    for name, (model_name, make_input) in FORWARD_WRAPPER_CASES.items():
        model, example = structural_models.BUILDERS[model_name]()
        expected = records[name]
        with torch.no_grad():
            if "dict" in expected:
                # Sequential.forward takes one argument, so (x, x) is passed whole
                # and Linear rejects the tuple: the same TypeError as the reference.
                error = expected["dict"]["error"]["dict"]
                with pytest.raises(TypeError) as info:
                    forward_wrapper(model, make_input(example), "cpu")
                assert (type(info.value).__name__, str(info.value)) == (error["type"], error["message"])
            else:
                assert describe(forward_wrapper(model, make_input(example), "cpu")) == expected, name


class TestForwardWrapper:
    def test_error_inside_positional_call_is_not_retried(self):
        calls = []

        class TwoArgs(nn.Module):
            def forward(self, a, b):
                calls.append((a, b))
                raise TypeError("boom")

        with pytest.raises(TypeError, match="boom"):
            forward_wrapper(TwoArgs(), (torch.ones(1), torch.ones(1)))
        assert len(calls) == 1

    def test_list_passed_whole_when_signature_wants_one_argument(self):
        class SumsList(nn.Module):
            def forward(self, items):
                return sum(items)

        out = forward_wrapper(SumsList(), [torch.ones(2), torch.ones(2), torch.ones(2)])
        assert torch.equal(out, torch.full((2,), 3.0))

    def test_device_none_moves_nothing(self):
        model = Recorder()
        x = torch.ones(2)
        forward_wrapper(model, {"x": x}, device=None)
        assert model.calls[0]["kwargs"]["x"] is x


def test_move_input_to_device_matches_reference(structural_reference, describe, build_from_description):
    for name, record in structural_reference["move_input_to_device"].items():
        value = build_from_description(record["input"])
        moved = move_input_to_device(value, "cpu")
        assert describe(moved) == record["output"], name
        assert type(moved).__name__ == record["output_type"], name
        assert (moved is value) is record["same_object"], name


def test_move_input_to_device_keeps_named_tuples():
    Batch = collections.namedtuple("Batch", ["ids", "mask"])
    batch = Batch(torch.ones(2), [torch.zeros(1)])
    moved = move_input_to_device(batch, torch.device("cpu"))
    assert type(moved) is Batch and moved.ids is batch.ids and isinstance(moved.mask, list)


def test_move_input_to_device_moves_nested_tensors():
    nested = {"a": [torch.ones(2), (torch.zeros(1), 3)]}
    moved = move_input_to_device(nested, "meta")
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == 3


def test_get_example_input_matches_reference(structural_reference):
    records = structural_reference["get_example_input"]
    loaders = {
        "pairs": [(torch.tensor([float(i)]), torch.tensor(-float(i))) for i in range(3)],
        "plain3": [torch.full((3,), float(i)) for i in range(3)],
    }
    checked = 0
    for key, record in records.items():
        if key == "note":
            continue
        if key == "empty":
            assert get_example_input([]) is record["value"] is None
            continue
        loader_name, _, index = key.rpartition("_i")
        assert get_example_input(loaders[loader_name], i=int(index)).tolist() == record["value"], key
        checked += 1
    assert checked == 8
    assert get_example_input(loaders["pairs"]).tolist() == [1.0]  # default i=1


def test_get_example_input_rejects_negative_index():
    with pytest.raises(ValueError, match="non-negative"):
        get_example_input([torch.ones(1)], i=-1)
