"""Issue 18: the reference's own callers' habits (SPEC deviation 7), without the reference.

The reference itself is exercised in tests/clients/ (when neural-compressor-pt is installed);
these tests pin nbwoq's rules on their own.
"""

import warnings

import pytest

torch = pytest.importorskip("torch")

import nbwoq_torch  # noqa: E402
from nbwoq_torch import _reference_calls  # noqa: E402
from nbwoq_torch import forward_wrapper, model_forward, quant_tensor, quant_weight_w_scale, quantize_4bit  # noqa: E402


def _weight(rows=4, cols=12, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _scales(rows=4, groups=3):
    scale = torch.rand(rows, groups, generator=torch.Generator().manual_seed(1)) / 4 + 0.05
    zp = torch.full((rows, groups), 7.0)
    return scale, zp


# -- quant_weight_w_scale: both call forms -----------------------------------------------


class TestWScaleForms:
    def expected(self, zp=True, dtype="int"):
        scale, z = _scales()
        return quant_weight_w_scale(_weight(), scale, zp=z if zp else None, group_size=4, dtype=dtype)

    @pytest.mark.parametrize(
        "call",
        [
            # the seed's forms
            lambda w, s, z: quant_weight_w_scale(w, s, z, 4, "int"),
            lambda w, s, z: quant_weight_w_scale(w, s, z, 4),
            lambda w, s, z: quant_weight_w_scale(w, s, z, group_size=4),
            lambda w, s, z: quant_weight_w_scale(w, s, zp=z, group_size=4),
            # 3.10's forms, GPTQ's call first
            lambda w, s, z: quant_weight_w_scale(w, s, None, z, 4, dtype="int", fp8_aware=False),
            lambda w, s, z: quant_weight_w_scale(w, s, None, z, 4, "int", False),
            lambda w, s, z: quant_weight_w_scale(w, s, torch.tensor([9.0]), z, 4),
            lambda w, s, z: quant_weight_w_scale(w, s, None, zp=z, group_size=4),
            lambda w, s, z: quant_weight_w_scale(w, s, scale_bf16_to_fp8=None, zp=z, group_size=4),
        ],
        ids=["seed-5pos", "seed-4pos", "seed-3pos-kw", "seed-kw", "ref-gptq", "ref-7pos", "ref-unused-s8",
             "ref-3pos-zp-kw", "ref-kw"],
    )
    def test_every_form_gives_the_same_codes(self, call):
        scale, zp = _scales()
        w = _weight()
        out = call(w, scale, zp)
        assert out is w
        assert torch.equal(out, self.expected())

    def test_three_positionals_keep_the_seeds_meaning(self):
        # Ambiguous: (weight, scale, t) is the seed's zero point t, as it always was.
        scale, zp = _scales()
        assert torch.equal(quant_weight_w_scale(_weight(), scale, zp, group_size=4), self.expected())
        assert not _reference_calls.is_reference_form((None, None, zp), {})
        assert _reference_calls.is_reference_form((None, None, zp, None), {})
        assert _reference_calls.is_reference_form((None, None, zp), {"zp": zp})
        assert _reference_calls.is_reference_form((None, None, zp), {"fp8_aware": False})
        assert not _reference_calls.is_reference_form((None, None, zp), {"fp8_aware": True, "scale_bf16_to_fp8": zp})
        assert not _reference_calls.is_reference_form((None, None, zp, 4), {})

    def test_a_call_fitting_neither_form_raises(self):
        scale, zp = _scales()
        with pytest.raises(TypeError, match="3.10's"):
            quant_weight_w_scale(_weight(), scale, None, zp, 4, "int", False, "extra")
        with pytest.raises(TypeError, match="the seed's"):
            quant_weight_w_scale(_weight(), scale, zp, 4, "int", None, "extra")
        with pytest.raises(TypeError, match="fp8_aware must be True or False"):
            quant_weight_w_scale(_weight(), scale, zp=zp, group_size=4, fp8_aware="yes")

    def test_signature_shows_the_seed_form_and_the_new_keywords(self):
        import inspect

        params = inspect.signature(quant_weight_w_scale).parameters
        assert list(params) == ["weight", "scale", "zp", "group_size", "dtype", "bits", "scale_bf16_to_fp8",
                                "fp8_aware"]

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
    @pytest.mark.parametrize("zp", [True, False], ids=["asym", "sym"])
    def test_fp8_aware_matches_the_reference_formula(self, dtype, zp):
        scale, z = _scales()
        s8 = torch.tensor([0.01])
        w = (_weight() * 3).to(dtype)
        # The reference 3.10's steps, written out.
        fullscale = torch.finfo(torch.float8_e4m3fnuz).max
        protective = fullscale - fullscale / 15
        ref = w.clone().mul_(1 / s8)
        ref = torch.clamp(ref, min=-protective, max=protective).to(torch.float8_e4m3fn).to(torch.float32)
        ref = ref.reshape(4, 3, 4).div(scale[:, :, None])
        ref = (ref + z[:, :, None] if zp else ref).round().reshape(4, 12)
        out = quant_weight_w_scale(w, scale, s8, z if zp else None, 4, dtype="int", fp8_aware=True)
        assert out is w and out.dtype == dtype
        # Codes are computed in float32 and stored once in the weight's dtype.
        assert torch.equal(out, ref.to(dtype))

    def test_fp8_aware_needs_the_fp8_scale(self):
        scale, zp = _scales()
        w = _weight()
        before = w.clone()
        with pytest.raises(TypeError, match="scale_bf16_to_fp8"):
            quant_weight_w_scale(w, scale, None, zp, 4, fp8_aware=True)
        assert torch.equal(w, before)


# -- the reference's ignored keywords ----------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_reference_calls, "_warned", set())


@pytest.mark.usefixtures("fresh_warnings")
class TestIgnoredKeywords:
    @pytest.mark.parametrize(
        "extra",
        [dict(num_bits=8), dict(data_type="nf4"), dict(num_bits=2, data_type="fp4"),
         dict(double_quant_scheme=True), dict(double_quant_scheme=False, double_quant=False)],
        ids=["num_bits", "data_type", "both", "bool-scheme", "bool-scheme-dq-off"],
    )
    def test_ignored_exactly_as_the_reference_ignores_them(self, extra):
        # AWQ's call: the reference quantizes at its defaults (bits=4, dtype="int").
        expected = quant_tensor(_weight(), group_size=4, scheme="sym")
        with pytest.warns(UserWarning, match="is ignored") as record:
            out = quant_tensor(_weight(), group_size=4, scheme="sym", **extra)
        assert torch.equal(out, expected)
        named = {key for key in extra if key != "double_quant"}
        assert all(any(repr(key) in str(w.message) for w in record) for key in named)

    def test_the_warning_is_shown_once(self):
        with pytest.warns(UserWarning, match="'num_bits' is ignored"):
            quant_tensor(_weight(), num_bits=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quant_tensor(_weight(), num_bits=8)

    @pytest.mark.parametrize(
        "func", [quantize_4bit, nbwoq_torch.qdq_weight_asym, nbwoq_torch.qdq_weight_sym],
        ids=["quantize_4bit", "asym", "sym"],
    )
    def test_every_kwargs_function_ignores_them(self, func):
        with pytest.warns(UserWarning, match="'data_type' is ignored"):
            assert torch.equal(func(_weight(), data_type="int"), func(_weight()))

    def test_unknown_keywords_still_raise(self):
        with pytest.raises(TypeError):
            quant_tensor(_weight(), nbits=8)

    def test_a_bool_scheme_while_double_quantizing_is_an_error(self):
        # There the reference would quantize the scales asym without saying so.
        with pytest.raises(ValueError):
            quant_tensor(_weight(4, 32), group_size=4, double_quant=True, double_quant_scheme=True)


# -- forward_wrapper / model_forward leave the model where it is ------------------------


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.to_calls = []

    def to(self, *args, **kwargs):
        self.to_calls.append(args)
        return super().to(*args, **kwargs)

    def forward(self, x):
        return self.linear(x)


class TestModelStays:
    def test_forward_wrapper_never_moves_the_model(self):
        model = _Recorder()
        forward_wrapper(model, (torch.ones(1, 3),), device="cpu")
        model_forward(model, [(torch.ones(1, 3), 0)] * 2, iters=-1, device="cpu")
        assert model.to_calls == []

    def test_move_model_moves_it(self):
        model = _Recorder()
        forward_wrapper(model, (torch.ones(1, 3),), device="cpu", move_model=True)
        model_forward(model, [(torch.ones(1, 3), 0)], iters=1, device="cpu", move_model=True)
        assert model.to_calls == [("cpu",), ("cpu",)]

    def test_a_model_without_to_runs(self):
        # The reference's own tests and wrapped models: a plain callable.
        seen = []

        def model(x, y=None):
            seen.append((x, y))
            return x

        t = torch.ones(2)
        assert forward_wrapper(model, {"x": t}, device="cpu") is t
        model_forward(model, [((t, t), 0)], iters=1, device="cpu")
        assert len(seen) == 2 and seen[1][1] is t

    def test_move_model_must_be_a_bool(self):
        with pytest.raises(TypeError, match="move_model"):
            forward_wrapper(_Recorder(), torch.ones(1, 3), move_model="yes")


# -- cast_int: value semantics (a deliberate difference) ---------------------------------


def test_cast_int_is_read_by_value():
    """``cast_int=False`` means levels, exactly as if absent; the reference tests the key's
    presence (so it would store codes). Deliberate: README and migration guide."""
    levels = quantize_4bit(_weight(), dtype="nf4")
    assert torch.equal(quantize_4bit(_weight(), dtype="nf4", cast_int=False), levels)
    codes_times_scale = quantize_4bit(_weight(), dtype="nf4", cast_int=True)
    assert not torch.equal(codes_times_scale, levels)
    w = _weight()
    codes, scale, _ = quantize_4bit(w.clone(), dtype="nf4", return_int=True)
    assert torch.equal(codes_times_scale, codes * scale)


# -- patch_reference, on a stand-in for the reference (no neural_compressor needed) ---------


def test_patch_reference_swaps_and_restores_a_module(monkeypatch):
    import sys
    import types

    def quant_tensor(weight, **kwargs):  # the stand-in's own function
        return "reference"

    def cast_fp8(tensor):  # a name the seed does not have
        return "reference"

    quant_tensor.__module__ = cast_fp8.__module__ = "fakeref.utility"
    package, utility, algorithm = (types.ModuleType(n) for n in ("fakeref", "fakeref.utility", "fakeref.algo"))
    utility.quant_tensor, utility.cast_fp8 = quant_tensor, cast_fp8
    package.utility = utility
    algorithm.quant_tensor = quant_tensor  # ``from .utility import quant_tensor``
    algorithm.unrelated = len  # not the reference module's: left alone
    for module in (package, utility, algorithm):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    with nbwoq_torch.patch_reference("fakeref.utility") as substitute:
        assert sys.modules["fakeref.utility"] is substitute and package.utility is substitute
        assert algorithm.quant_tensor is nbwoq_torch.quant_tensor
        assert substitute.quant_tensor is nbwoq_torch.quant_tensor
        assert substitute.GraphTrace is nbwoq_torch.GraphTrace
        assert substitute.cast_fp8 is cast_fp8 and algorithm.unrelated is len
        with pytest.raises(RuntimeError, match="already patched"):
            with nbwoq_torch.patch_reference("fakeref.utility"):
                pass
    assert sys.modules["fakeref.utility"] is utility and package.utility is utility
    assert algorithm.quant_tensor is quant_tensor and utility.quant_tensor is quant_tensor

    with pytest.raises(KeyError):
        with nbwoq_torch.patch_reference("fakeref.utility"):
            raise KeyError("inside")
    assert sys.modules["fakeref.utility"] is utility and algorithm.quant_tensor is quant_tensor


def test_patch_reference_needs_the_reference():
    with pytest.raises(ModuleNotFoundError):
        with nbwoq_torch.patch_reference("nbwoq_no_such_reference.utility"):
            pass


class _UntraceableOutput(torch.nn.Module):
    """Returns an object TorchScript cannot trace, as transformers 5.x models do (DynamicCache)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return {"out": self.fc(self.norm(x)), "cache": object()}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("absorb_backend", ["torchscript", "auto", "export"])
def test_patch_reference_absorb_backend(monkeypatch, absorb_backend):
    """The reference's path (TorchScript) by default, torch.export only when asked; a caller
    naming a backend still gets it."""
    import sys
    import types

    def get_absorb_layers(model, example_inputs, supported_layers=["Linear"], folding=False):  # noqa: B006
        return "reference"

    class GraphTrace:
        pass

    get_absorb_layers.__module__ = GraphTrace.__module__ = "fakeref.utility"
    utility, algorithm = types.ModuleType("fakeref.utility"), types.ModuleType("fakeref.awq")
    utility.get_absorb_layers = algorithm.get_absorb_layers = get_absorb_layers
    utility.GraphTrace = GraphTrace
    for module in (utility, algorithm):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    model, x = _UntraceableOutput().eval(), torch.randn(2, 8)
    found = ({"norm": ["fc"]}, [])
    nothing = ({}, ["fc"])  # TorchScript fails: every layer without an absorber, as the reference says
    with nbwoq_torch.patch_reference("fakeref.utility", absorb_backend=absorb_backend) as substitute:
        assert algorithm.get_absorb_layers is substitute.get_absorb_layers
        expected = nothing if absorb_backend == "torchscript" else found
        assert substitute.get_absorb_layers(model, x) == expected
        assert substitute.get_absorb_layers(model, x, ["Linear"], False) == expected
        assert substitute.get_absorb_layers(model, x, backend="export") == found
        assert substitute.get_absorb_layers(model, x, backend="torchscript") == nothing
        traced = substitute.GraphTrace().get_absorb_to_layer(model, x, ["Linear"])
        assert traced == ((None, None) if absorb_backend == "torchscript" else found)
        assert issubclass(substitute.GraphTrace, nbwoq_torch.GraphTrace)
    assert algorithm.get_absorb_layers is get_absorb_layers and sys.modules["fakeref.utility"] is utility


def test_patch_reference_rejects_an_unknown_absorb_backend(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "fakeref.utility", types.ModuleType("fakeref.utility"))
    with pytest.raises(ValueError, match="absorb_backend"):
        with nbwoq_torch.patch_reference("fakeref.utility", absorb_backend="fx"):
            pass
    assert not hasattr(sys.modules["fakeref.utility"], "__nbwoq_patched__")


# -- scale shapes the reference broadcasts (its GPTQ's Conv1D path) --------------------------


def _broadcast_oracle(weight, scale, zp, group_size):
    """Integer codes as torch broadcasting computes them group by group: group i divides
    by column i of ``scale`` (a short last group by its last column), each column
    broadcast over the rows; with ``group_size=-1``, by ``scale`` broadcast whole."""
    weight = weight.double()
    if group_size == -1:
        return torch.round(weight / scale + (0 if zp is None else zp)).float()
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[1], group_size):
        column = start // group_size if start + group_size <= weight.shape[1] else -1
        part = weight[:, start:start + group_size] / scale[:, column:column + 1 or None]
        out[:, start:start + group_size] = torch.round(part + (0 if zp is None else zp[:, column:column + 1 or None]))
    return out.float()


@pytest.mark.parametrize(
    "group_size, scale_shape, with_zp",
    [(8, (1, 4), True), (8, (1, 3), False), (10, (4, 5), True), (32, (1, 4), False), (-1, (1, 24), True),
     (-1, (1, 1), False), (1, (4, 25), True), (1, (1, 26), False)],
)
def test_quant_weight_w_scale_broadcasts_one_row_and_extra_columns(group_size, scale_shape, with_zp):
    from nbwoq_torch import _reference_calls as calls

    generator = torch.Generator().manual_seed(7)
    # Values on a coarse grid: float32 and float64 give the same quotients' rounding.
    weight = torch.randint(-64, 64, (4, 24), generator=generator).float() / 8
    scale = torch.tensor([0.25, 0.5, 1.0, 2.0])[torch.randint(0, 4, scale_shape, generator=generator)]
    zp = torch.randint(0, 15, scale_shape, generator=generator).float() if with_zp else None
    calls._warned.discard(("quant_weight_w_scale", "broadcast"))
    with pytest.warns(UserWarning, match=r"broadcast as the reference's torch arithmetic"):
        ours = quant_weight_w_scale(weight.clone(), scale, None, zp, group_size, dtype="int")
    assert torch.equal(ours, _broadcast_oracle(weight, scale, zp, group_size))


@pytest.mark.parametrize("group_size, scale_shape", [(8, (2, 3)), (8, (4, 2)), (-1, (4, 2)), (8, (12,))])
def test_quant_weight_w_scale_refuses_shapes_torch_cannot_broadcast(group_size, scale_shape):
    weight = torch.randn(4, 24)
    before = weight.clone()
    with pytest.raises(ValueError, match="scale"):
        quant_weight_w_scale(weight, torch.rand(*scale_shape) + 0.1, None, None, group_size)
    assert torch.equal(weight, before)
