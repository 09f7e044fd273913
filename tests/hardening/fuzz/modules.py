"""Module utilities of ``nbwoq_torch``: strict dotted-name lookups and the capture helpers
(moving inputs, example inputs, absorb layers, input/output hooks)."""

from hypothesis import strategies as st

from .core import FuzzFailure
from .strategies import mostly
from .values import _torch


NAME_PARTS = ("layers", "0", "1", "2", "-1", "fc", "sq_linear", "orig_layer", "weight", "bias", "", "mlp", "norm",
              "__class__", "training", "01", " fc", "layers.0")


@st.composite
def dotted_names(draw):
    """``(function, name)``: a lookup and a dotted name, real or not."""
    func = draw(st.sampled_from(("get_module", "fetch_module", "set_module")))
    parts = draw(st.lists(st.sampled_from(NAME_PARTS), min_size=0, max_size=4))
    name = ".".join(parts) if draw(st.integers(0, 9)) else draw(st.sampled_from((None, 3, b"fc", ["fc"])))
    return func, name


def lookup_model():
    """Layers in a ModuleList, one wrapped the PEFT way (the real layer in ``sq_linear``)."""
    torch = _torch()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.sq_linear = inner

    class Block(torch.nn.Module):
        def __init__(self, wrap):
            super().__init__()
            self.fc = Wrapper(torch.nn.Linear(4, 4)) if wrap else torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block(False), Block(True)])
    return model


def _state(model):
    return [(k, id(v)) for k, v in model.named_modules()], {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_lookup(case):
    """A lookup returns what the dotted name names, or raises AttributeError naming the
    missing part (SPEC deviation 5), TypeError/ValueError for a malformed name; a failed
    ``set_module`` changes nothing."""
    import nbwoq_torch

    torch = _torch()
    func, name = case
    model = lookup_model()
    modules_before, params_before = _state(model)
    classes_before = {cls: set(vars(cls)) for cls in (torch.nn.Module, torch.nn.ModuleList, type(model))}
    replacement = torch.nn.Identity()
    try:
        if func == "set_module":
            nbwoq_torch.set_module(model, name, replacement)
        else:
            result = getattr(nbwoq_torch, func)(model, name)
    except AttributeError as exc:
        parts = name.split(".") if isinstance(name, str) else []
        if not any(repr(p) in str(exc) for p in parts):
            raise FuzzFailure(f"{func}({name!r}): AttributeError names no part of the name: {exc}") from exc
    except (TypeError, ValueError) as exc:
        if not str(exc):
            raise FuzzFailure(f"{func}({name!r}): {type(exc).__name__} without a message") from exc
    except Exception as exc:
        raise FuzzFailure(f"{func}({name!r}): {type(exc).__name__}: {exc}") from exc
    else:
        if any(set(vars(cls)) != names for cls, names in classes_before.items()):
            raise FuzzFailure(f"{func}({name!r}) changed a class (every module of the process)")
        if func == "set_module":
            # a dunder part ("__class__") is registered as a submodule that attribute lookup
            # never reaches (Python finds the type's attribute first): noted, not judged here
            if "__" not in name and nbwoq_torch.get_module(model, name) is not replacement:
                raise FuzzFailure(f"set_module({name!r}) did not put the module where get_module finds it")
        elif func == "get_module" and isinstance(name, str) and name and "sq_linear" not in name \
                and "orig_layer" not in name:
            want = model
            for part in name.split("."):
                want = getattr(want, part) if hasattr(want, part) else getattr(want.sq_linear, part)
            if result is not want:
                raise FuzzFailure(f"get_module({name!r}) returned {result!r}, not {want!r}")
        return "ok"
    after = _state(model)
    if after[0] != modules_before or any(not torch.equal(after[1][k], v) for k, v in params_before.items()):
        raise FuzzFailure(f"{func}({name!r}) failed but changed the model")
    return "refused"


def _leaf():
    return st.one_of(st.integers(), st.text(max_size=3), st.none(),
                     st.integers(0, 3).map(lambda n: _torch().arange(n, dtype=_torch().float32)))


def nested_inputs():
    return st.recursive(_leaf(), lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=2), inner, max_size=3)), max_leaves=8)


def _same_structure(a, b):
    torch = _torch()
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b.to(a.device))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    return a == b


def check_move_input(value, device):
    """Same structure on the device, or TypeError/ValueError/RuntimeError from torch for a
    device that does not exist (torch's own errors for ``.to``)."""
    import nbwoq_torch

    torch = _torch()
    try:
        moved = nbwoq_torch.move_input_to_device(value, device)
    except (TypeError, ValueError, RuntimeError) as exc:
        if device in ("cpu", torch.device("cpu"), "meta"):
            raise FuzzFailure(f"move_input_to_device(..., {device!r}) raised {exc!r}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__}: {exc}") from exc
    if device in ("cpu", torch.device("cpu")) and not _same_structure(value, moved):
        raise FuzzFailure("move_input_to_device changed the structure or the values")
    return "ok"


def batches():
    torch = _torch()
    t = st.integers(0, 3).map(lambda n: torch.full((2,), float(n)))
    return st.one_of(t, st.tuples(t, t), st.lists(t, min_size=2, max_size=2), st.tuples(t, t, t),
                     st.dictionaries(st.sampled_from(("ids", "mask")), t, min_size=1))


def check_example_input(loader, i):
    import nbwoq_torch

    try:
        got = nbwoq_torch.get_example_input(loader, i)
    except ValueError as exc:
        if not (isinstance(i, bool) or not isinstance(i, int) or i < 0):
            raise FuzzFailure(f"get_example_input refused i={i!r}: {exc}") from exc
        if "i must" not in str(exc):
            raise FuzzFailure(f"message does not name i: {exc}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__}: {exc}") from exc
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise FuzzFailure(f"accepted i={i!r}")
    if not loader:
        if got is not None:
            raise FuzzFailure("an empty loader must give None")
        return "ok"
    batch = loader[min(i, len(loader) - 1)]
    want = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    if not _same_structure(want, got):
        raise FuzzFailure(f"get_example_input({i}) returned the wrong batch's input")
    return "ok"


LAYER_POOL = ("Linear", "Linear", "ReLU", "LayerNorm", "GELU", "Identity", "Dropout")


def _layer(kind):
    nn = _torch().nn
    return {"Linear": lambda: nn.Linear(8, 8), "ReLU": nn.ReLU, "LayerNorm": lambda: nn.LayerNorm(8), "GELU": nn.GELU,
            "Identity": nn.Identity, "Dropout": nn.Dropout}[kind]()


@st.composite
def absorb_cases(draw):
    """``(layer kinds, supported_layers, backend)`` for ``get_absorb_layers``."""
    kinds = draw(st.lists(st.sampled_from(LAYER_POOL), min_size=1, max_size=6))
    supported = draw(mostly(st.lists(st.sampled_from(("Linear", "LayerNorm", "Conv2d", "Conv1D", "Bogus")),
                                     min_size=1, max_size=3),
                            st.sampled_from(("Linear", None, [1], ("Linear",), []))))
    backend = draw(mostly(st.sampled_from(("auto", "torchscript", "auto")), st.sampled_from(("export", "bogus", None))))
    return kinds, supported, backend


def check_absorb(case):
    """``({absorber: [layers]}, [layers])`` naming modules of the model, or TypeError /
    ValueError for a bad ``supported_layers`` or ``backend``."""
    import logging

    import nbwoq_torch

    torch = _torch()
    kinds, supported, backend = case
    model = torch.nn.Sequential(*[_layer(k) for k in kinds]).eval()
    names = {name for name, _ in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Quiet the expected trace warnings for this call only: a level left behind would
    # hide them from later tests that assert on them (caplog).
    graph_logger = logging.getLogger("nbwoq_torch")
    level = graph_logger.level
    graph_logger.setLevel(logging.ERROR)
    try:
        absorb, lonely = nbwoq_torch.get_absorb_layers(model, torch.randn(2, 8), supported_layers=supported,
                                                       backend=backend)
    except (TypeError, ValueError) as exc:
        if not ("supported_layers" in str(exc) or "backend" in str(exc)):
            raise FuzzFailure(f"get_absorb_layers{case}: message names neither argument: {exc}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"get_absorb_layers{case}: {type(exc).__name__}: {exc}") from exc
    finally:
        graph_logger.setLevel(level)
    if not isinstance(absorb, dict) or not isinstance(lonely, list):
        raise FuzzFailure(f"get_absorb_layers{case} returned {type(absorb).__name__}, {type(lonely).__name__}")
    mentioned = set(absorb) | {n for v in absorb.values() for n in v} | set(lonely)
    if not mentioned <= names:
        raise FuzzFailure(f"get_absorb_layers{case} names modules that do not exist: {mentioned - names}")
    if any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()):
        raise FuzzFailure(f"get_absorb_layers{case} changed the model's weights")
    return "ok"


@st.composite
def hook_cases(draw):
    """``(module_hook_config, iters, n_batches)`` for ``get_module_input_output``."""
    names = st.sampled_from(("0", "1", "2", "3", "9", "", "0.weight", "a.b"))
    kinds = mostly(st.lists(st.sampled_from(("input", "output")), min_size=0, max_size=2),
                   st.sampled_from(("output", ["inputs"], 3, None)))
    config = draw(mostly(st.dictionaries(names, kinds, max_size=3), st.sampled_from(([], None, {3: ["input"]}))))
    iters = draw(mostly(st.integers(1, 4) | st.just(-1), st.sampled_from((0, -2, 1.0, None, True))))
    return config, iters, draw(st.integers(0, 4))


def check_hooks(case):
    """A record per configured module, or TypeError/ValueError/AttributeError (a missing
    module, SPEC deviation 5); either way no hook is left on the model."""
    import nbwoq_torch

    torch = _torch()
    config, iters, n_batches = case
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.ReLU())
    loader = [(torch.randn(3, 4), torch.zeros(3)) for _ in range(n_batches)]
    try:
        record = nbwoq_torch.get_module_input_output(model, config, dataloader=loader, iters=iters)
    except (TypeError, ValueError, AttributeError) as exc:
        outcome = "refused"
        if not str(exc):
            raise FuzzFailure(f"get_module_input_output{case}: {type(exc).__name__} without a message") from exc
    except Exception as exc:
        raise FuzzFailure(f"get_module_input_output{case}: {type(exc).__name__}: {exc}") from exc
    else:
        outcome = "ok"
        if set(record) != set(config):
            raise FuzzFailure(f"get_module_input_output{case}: recorded {sorted(record)} for {sorted(config)}")
        runs = n_batches if iters == -1 else min(iters, n_batches)
        for name, kinds in config.items():
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            for kind in kinds:
                if len(record[name][kind]) != runs:
                    raise FuzzFailure(f"get_module_input_output{case}: {len(record[name][kind])} {kind}s of "
                                      f"{name!r} for {runs} batches")
    left = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if left:
        raise FuzzFailure(f"get_module_input_output{case} left hooks on {left}")
    return outcome
