"""Short fuzz profile of ``nbwoq_torch``: the tensor functions (against the core on a
NumPy copy of the same bits) and the module utilities (strict lookups, capture helpers)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
nbwoq_torch = pytest.importorskip("nbwoq_torch")

from fuzz import modules, torch_face  # noqa: E402
from fuzz.profile import EXAMPLES, FUZZ  # noqa: E402


@pytest.mark.parametrize("func", sorted(torch_face.TORCH_CASES))
def test_fuzz_torch_face(func):
    @FUZZ
    @given(torch_face.TORCH_CASES[func]())
    def run(case):
        torch_face.check_torch_case(case)

    run()


@pytest.mark.parametrize("func", sorted(torch_face.TORCH_CASES))
def test_fuzz_torch_reference_path(func):
    """CPU tensors on the array-API reference path (the one CUDA tensors take) against the
    kernels on a NumPy copy: the paths agree bit for bit, half precision included."""
    @settings(FUZZ, max_examples=max(5, EXAMPLES // 2))
    @given(torch_face.TORCH_CASES[func]())
    def run(case):
        torch_face.check_torch_reference_case(case)

    run()


@FUZZ
@given(modules.dotted_names())
def test_fuzz_module_lookups(name):
    modules.check_lookup(name)


@FUZZ
@given(modules.nested_inputs(), st.sampled_from(["cpu", torch.device("cpu"), "meta", "nope", 3, None]))
def test_fuzz_move_input_to_device(value, device):
    modules.check_move_input(value, device)


@FUZZ
@given(st.lists(modules.batches(), max_size=4), st.one_of(st.integers(-2, 6), st.sampled_from((1.0, None, "1", True))))
def test_fuzz_get_example_input(loader, i):
    modules.check_example_input(loader, i)


@settings(FUZZ, max_examples=max(5, EXAMPLES // 4))  # tracing is slow
@given(modules.absorb_cases())
def test_fuzz_get_absorb_layers(case):
    modules.check_absorb(case)


@FUZZ
@given(modules.hook_cases())
def test_fuzz_get_module_input_output(case):
    modules.check_hooks(case)
