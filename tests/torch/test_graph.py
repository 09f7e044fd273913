"""GraphTrace / get_absorb_layers: INC parity on both tracing backends, and the rules in isolation."""

import logging

import pytest

torch = pytest.importorskip("torch")

from nbwoq_torch._graph import GraphNode, GraphTrace, get_absorb_layers, get_parent  # noqa: E402

BACKENDS = ["torchscript", "export"]
nn = torch.nn


# -- parity with the reference ------------------------------------------------------------


def _absorb_cases(reference):
    cases = []
    for index, record in enumerate(reference["get_absorb_layers"]):
        kind = "str" if isinstance(record["example_inputs"], str) else next(iter(record["example_inputs"]))
        layers = "-".join(record["kwargs"].get("supported_layers", ["default"]))
        cases.append(pytest.param(index, id=f"{record['model']}-{kind}-{layers}"))
    return cases


def _load_reference():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "golden" / "structural" / "structural_reference.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", _absorb_cases(_load_reference()))
def test_absorb_layers_match_reference(index, backend, structural_reference, structural_models, build_from_description):
    # Every record is valid input; both backends must give the reference's
    # answer, in the reference's order (key order = graph order).
    record = structural_reference["get_absorb_layers"][index]
    model, _ = structural_models.BUILDERS[record["model"]]()
    # Rebuilt from its description; "not a tensor" is a plain string no backend can trace.
    example = build_from_description(record["example_inputs"])
    absorb_to_layer, no_absorb_layers = get_absorb_layers(model, example, **record["kwargs"], backend=backend)
    expected = record["result"]
    assert [[key, value] for key, value in absorb_to_layer.items()] == expected["absorb_to_layer_items_in_order"]
    assert absorb_to_layer == expected["absorb_to_layer"]
    assert no_absorb_layers == expected["no_absorb_layers"]


def test_default_backend_matches_reference(structural_reference, structural_models):
    # "auto" is what callers get: TorchScript first, as the reference.
    record = next(r for r in structural_reference["get_absorb_layers"] if r["model"] == "two_consumers")
    model, example = structural_models.build_two_consumers()
    absorb_to_layer, no_absorb_layers = get_absorb_layers(model, example)
    assert [[key, value] for key, value in absorb_to_layer.items()] == record["result"]["absorb_to_layer_items_in_order"]
    assert no_absorb_layers == record["result"]["no_absorb_layers"]


def test_default_arguments_are_not_mutated(structural_models):
    model, example = structural_models.build_toy_sequential()
    defaults = get_absorb_layers.__defaults__
    get_absorb_layers(model, example)
    get_absorb_layers(model, example, supported_layers=["Linear", "LayerNorm"])
    assert get_absorb_layers.__defaults__ == defaults
    assert defaults[0] == ["Linear"]


def test_folding_has_no_effect(structural_models):
    # The reference accepts folding but never uses it.
    model, example = structural_models.build_two_consumers()
    assert get_absorb_layers(model, example, folding=True) == get_absorb_layers(model, example, folding=False)


def test_single_layer_name_string_is_accepted(structural_models):
    model, example = structural_models.build_toy_sequential()
    assert get_absorb_layers(model, example, supported_layers="Linear") == get_absorb_layers(model, example)


# -- get_parent -----------------------------------------------------------------------------


class TestGetParent:
    def test_torchscript_node(self):
        model = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
        traced = GraphTrace().trace(model.eval(), torch.randn(3, 4))
        linear = traced.graph.findNode("aten::linear")
        assert get_parent(linear).kind() == "aten::layer_norm"
        inputs = get_parent(linear, all_parents=True)
        assert len(inputs) == 3  # data, weight, bias
        assert all(isinstance(value, torch._C.Value) for value in inputs)
        assert inputs[0].node().kind() == "aten::layer_norm"

    def test_node_without_inputs(self):
        traced = GraphTrace().trace(nn.Linear(4, 2).eval(), torch.randn(3, 4))
        constant = traced.graph.findNode("prim::Constant")
        assert get_parent(constant) is None
        assert get_parent(constant, all_parents=True) is None

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_graph_node(self, backend):
        tracer = GraphTrace()
        model = nn.Sequential(nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2)).eval()
        traced = tracer.trace(model, torch.randn(3, 4), backend=backend)
        ((linear, kind),) = tracer.get_nodes(traced, ["aten::linear"])
        assert kind == "aten::linear" and linear.module_name == "2"
        relu = get_parent(linear)
        assert isinstance(relu, GraphNode) and relu.kind == "aten::relu" and relu.module_name == "1"
        assert get_parent(relu).kind == "aten::layer_norm"
        assert get_parent(linear, all_parents=True)[0] is relu

    def test_rejects_other_objects(self):
        with pytest.raises(TypeError, match="torch._C.Node or a GraphNode"):
            get_parent("aten::linear")


# -- the rules, each on a model built for it (expected maps follow from SPEC's rules) --------


class Chain(nn.Module):
    """norm -> op -> fc: does ``op`` let the norm absorb for fc?"""

    def __init__(self, op):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.op = op
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.op(self.norm(x)))


class ToFloat(nn.Module):
    def forward(self, x):
        return x.to(torch.float64).to(torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
class TestRules:
    @pytest.mark.parametrize(
        "op", [nn.ReLU(), nn.LeakyReLU(), nn.Hardtanh(), ToFloat(), nn.Dropout(0.5)], ids=lambda m: type(m).__name__
    )
    def test_walk_passes_skip_ops(self, op, backend):
        # relu / leaky_relu / hardtanh / to are skip ops; eval-mode dropout
        # is no op at all (TorchScript freezing drops it; export keeps it).
        model = Chain(op).eval()
        assert get_absorb_layers(model, torch.randn(2, 8), backend=backend) == ({"norm": ["fc"]}, [])

    @pytest.mark.parametrize("op", [nn.GELU(), nn.SiLU(), nn.Sigmoid()], ids=lambda m: type(m).__name__)
    def test_walk_stops_at_other_ops(self, op, backend):
        model = Chain(op).eval()
        assert get_absorb_layers(model, torch.randn(2, 8), backend=backend) == ({}, ["fc"])

    def test_skip_op_consumers_are_checked_recursively(self, backend):
        class Fork(nn.Module):
            def __init__(self, tail_is_linear):
                super().__init__()
                self.norm = nn.LayerNorm(8)
                self.fc1 = nn.Linear(8, 8)
                self.fc2 = nn.Linear(8, 8)
                self.tail_is_linear = tail_is_linear

            def forward(self, x):
                h = self.norm(x)
                y = self.fc1(h)
                r = torch.relu(h)
                # Either every path from the norm ends in a layer, or one
                # path ends in an add that a scale would change.
                tail = self.fc2(r) if self.tail_is_linear else r + 1.0
                return y + tail

        absorbing = get_absorb_layers(Fork(True).eval(), torch.randn(2, 8), backend=backend)
        assert absorbing == ({"norm": ["fc1", "fc2"]}, [])
        blocked = get_absorb_layers(Fork(False).eval(), torch.randn(2, 8), backend=backend)
        assert blocked == ({}, ["fc1"])

    @pytest.mark.parametrize(("groups", "absorbs"), [(1, True), (8, True), (2, False)], ids=["dense", "depthwise", "grouped"])
    def test_grouped_convolution_is_not_supported(self, groups, absorbs, backend):
        model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=groups)).eval()
        result = get_absorb_layers(model, torch.randn(1, 3, 6, 6), supported_layers=["Conv2d"], backend=backend)
        assert result == (({"0": ["2"]}, ["0"]) if absorbs else ({}, ["0", "2"]))


class WeightTimesNorm(nn.Module):
    """An RMSNorm under a class name the reference does not know: y = weight * norm(x)."""

    def __init__(self, hidden):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(hidden) + 0.5)

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class OnePlusWeightNorm(WeightTimesNorm):
    """Gemma's form, y = norm(x) * (1 + weight): dividing the weight by a scale
    does not divide the output by it, so it must not absorb."""

    def forward(self, x):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)) * (1.0 + self.weight)


class NormThenProjections(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.norm = norm
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)

    def forward(self, x):
        h = self.norm(self.embed(x))
        return self.q(h) * self.k(h)


@pytest.mark.parametrize("backend", BACKENDS)
class TestUnknownNormClasses:
    def test_weight_times_norm_absorbs(self, backend):
        model = NormThenProjections(WeightTimesNorm(8)).eval()
        assert "WeightTimesNorm" not in GraphTrace().supported_torch_module_to_aten
        assert get_absorb_layers(model, torch.randn(2, 8), backend=backend) == ({"norm": ["q", "k"]}, ["embed"])

    def test_one_plus_weight_norm_does_not_absorb(self, backend):
        model = NormThenProjections(OnePlusWeightNorm(8)).eval()
        absorb_to_layer, no_absorb_layers = get_absorb_layers(model, torch.randn(2, 8), backend=backend)
        assert absorb_to_layer == {}
        assert sorted(no_absorb_layers) == ["embed", "k", "q"]

    def test_module_without_weight_does_not_absorb(self, backend):
        # The mul of a gated MLP (act(gate(x)) * up(x)) is absorbable by kind,
        # but its module has no weight to take the scale.
        class GatedMLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.gate = nn.Linear(8, 16)
                self.up = nn.Linear(8, 16)
                self.down = nn.Linear(16, 8)

            def forward(self, x):
                return self.down(torch.sigmoid(self.gate(x)) * self.up(x))

        model = nn.Sequential(nn.LayerNorm(8), GatedMLP()).eval()
        absorb_to_layer, no_absorb_layers = get_absorb_layers(model, torch.randn(2, 8), backend=backend)
        assert absorb_to_layer == {"0": ["1.gate", "1.up"]}
        assert no_absorb_layers == ["1.down"]


class Conv1D(nn.Module):
    """The shape of transformers' GPT-2 ``Conv1D`` (matched by class name)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Conv1DStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.c1 = Conv1D(16, 8)
        self.c2 = Conv1D(8, 16)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.relu(self.c1(self.ln(x))))))


@pytest.mark.parametrize("backend", BACKENDS)
class TestConv1D:
    def test_conv1d_layers_found_when_requested(self, backend):
        # ln feeds c1 (through c1's own flattening view); c1 feeds relu -> c2;
        # c2 feeds relu -> head.
        model = Conv1DStack().eval()
        result = get_absorb_layers(model, torch.randn(2, 3, 8), supported_layers=["Linear", "Conv1D"], backend=backend)
        assert result == ({"ln": ["c1"], "c1": ["c2"], "c2": ["head"]}, [])

    def test_reference_rules_without_conv1d(self, backend):
        # Without "Conv1D", addmm nodes are invisible, as in the reference:
        # head's parent (through relu) is a view, which cannot absorb.
        model = Conv1DStack().eval()
        assert get_absorb_layers(model, torch.randn(2, 3, 8), backend=backend) == ({}, ["head"])


# -- backends: failure, fallback and where they differ -----------------------------------------


class UntraceableOutput(nn.Module):
    """Returns an object TorchScript cannot trace (as transformers' DynamicCache)."""

    class Meta:
        def __init__(self, value):
            self.value = value

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        out = self.fc2(torch.relu(self.fc1(self.norm(x))))
        return {"out": out, "meta": self.Meta(out)}


class TestBackends:
    def test_auto_falls_back_to_export(self, caplog):
        model = UntraceableOutput().eval()
        x = torch.randn(2, 8)
        with caplog.at_level(logging.WARNING, logger="nbwoq_torch._graph"):
            assert get_absorb_layers(model, x, backend="torchscript") == ({}, ["fc1", "fc2"])
        assert "torch.jit.trace failed" in caplog.text
        expected = ({"norm": ["fc1"], "fc1": ["fc2"]}, [])
        assert get_absorb_layers(model, x, backend="export") == expected
        assert get_absorb_layers(model, x) == expected

    def test_get_absorb_to_layer_auto_falls_back_to_export(self):
        model = UntraceableOutput().eval()
        x = torch.randn(2, 8)
        tracer = GraphTrace()
        assert tracer.get_absorb_to_layer(model, x, ["Linear"]) == (None, None)  # TorchScript, the default
        expected = tracer.get_absorb_to_layer(model, x, ["Linear"], backend="export")
        assert expected == ({"norm": ["fc1"], "fc1": ["fc2"]}, [])
        assert tracer.get_absorb_to_layer(model, x, ["Linear"], backend="auto") == expected
        traceable = Chain(nn.ReLU()).eval()
        assert tracer.get_absorb_to_layer(traceable, x, ["Linear"], backend="auto") == tracer.get_absorb_to_layer(
            traceable, x, ["Linear"]
        )
        with pytest.raises(ValueError, match="backend"):
            tracer.get_absorb_to_layer(model, x, ["Linear"], backend="fx")

    def test_nothing_traces(self, caplog):
        model = Conv1DStack().eval()
        with caplog.at_level(logging.WARNING, logger="nbwoq_torch._graph"):
            assert get_absorb_layers(model, "text") == ({}, ["head"])
            assert get_absorb_layers(model, "text", supported_layers=["Linear", "Conv1D"]) == (
                {},
                ["c1", "c2", "head"],
            )
        assert "torch.export.export failed" in caplog.text

    def test_trace_returns_none_on_failure(self):
        tracer = GraphTrace()
        assert tracer.trace(nn.Linear(2, 2), "text") is None
        assert tracer.trace(nn.Linear(2, 2), "text", backend="export") is None
        assert tracer.get_absorb_to_layer(nn.Linear(2, 2), "text", ["Linear"]) == (None, None)

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("example", ["tuple", "list", "dict"])
    def test_example_input_containers(self, example, backend):
        # A tuple or list holds positional arguments (the reference retries a
        # list that fails as its first element), a dict keyword arguments.
        model = Chain(nn.ReLU()).eval()
        x = torch.randn(2, 8)
        inputs = {"tuple": (x,), "list": [x], "dict": {"x": x}}[example]
        assert get_absorb_layers(model, inputs, backend=backend) == ({"norm": ["fc"]}, [])

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_batch_norm_absorbs_before_relu(self, backend):
        # torch.jit.freeze folds the eval BatchNorm into the convolution before
        # it (the folded node keeps the BatchNorm's scope); export keeps the
        # BatchNorm. Either way the layer right before the relu is "1".
        model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        x = torch.randn(1, 3, 5, 5)
        assert get_absorb_layers(model, x, ["Conv2d"], backend=backend) == ({"1": ["3"]}, ["0"])

    def test_get_nodes_agree(self, structural_models):
        model, ids = structural_models.build_toy_transformer()
        tracer = GraphTrace()
        names = {}
        for backend in BACKENDS:
            traced = tracer.trace(model, ids, backend=backend)
            kinds = tracer.mapping_torch_module_to_aten(["Linear", "LayerNorm"])
            names[backend] = [(node.kind, node.module_name) for node, _ in tracer.get_nodes(traced, kinds)]
        assert names["torchscript"] == names["export"]
        linears = [name for kind, name in names["export"] if kind == "aten::linear"]
        assert linears == [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


class TestGraphTraceHelpers:
    def test_mapping_dedups_and_warns(self, caplog):
        tracer = GraphTrace()
        with caplog.at_level(logging.WARNING, logger="nbwoq_torch._graph"):
            kinds = tracer.mapping_torch_module_to_aten(["Conv2d", "ConvTranspose2d", "Linear", "Linaer"])
        assert kinds == ["aten::_convolution", "aten::linear"]
        assert "Linaer is not a supported layer type" in caplog.text

    def test_get_nodes_rejects_untraced(self):
        with pytest.raises(TypeError, match="traced_model must come from GraphTrace.trace"):
            GraphTrace().get_nodes(nn.Linear(2, 2), ["aten::linear"])

    def test_remove_unsupported_layers(self, structural_models):
        model, _ = structural_models.build_toy_transformer()
        no_absorb = ["layers.0.o_proj"]
        kept = GraphTrace().remove_unsupported_layers(
            model,
            {"layers.0.ln1": ["layers.0.q_proj"], "layers.0.q_proj": ["layers.0.act"], "layers.0": ["layers.0.fc1"]},
            no_absorb,
        )
        # act is a ReLU (no absorbable layer type); layers.0 is a Block.
        assert kept == {"layers.0.ln1": ["layers.0.q_proj"]}
        assert no_absorb == ["layers.0.o_proj", "layers.0.act", "layers.0.fc1"]


class TestArgumentErrors:
    def test_unknown_backend(self, structural_models):
        model, example = structural_models.build_toy_sequential()
        with pytest.raises(ValueError, match="backend must be one of"):
            get_absorb_layers(model, example, backend="onnx")
        with pytest.raises(ValueError, match="backend must be one of"):
            GraphTrace().trace(model, example, backend="auto")

    @pytest.mark.parametrize("layers", [5, [nn.Linear], None])
    def test_supported_layers_type(self, layers, structural_models):
        model, example = structural_models.build_toy_sequential()
        with pytest.raises(TypeError, match="supported_layers must be a list of class names"):
            get_absorb_layers(model, example, supported_layers=layers)
