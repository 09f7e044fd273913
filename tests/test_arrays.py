"""``_arrays``: ml_dtypes is imported on first need, and its bfloat16 is met whenever it
comes (nbwoq imported before or after ml_dtypes); ``sqrt`` is correctly rounded on every
array library."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def test_importing_nbwoq_and_the_command_leaves_ml_dtypes_out():
    code = ("import sys, nbwoq; import nbwoq.command.cli, nbwoq.command.run; "
            "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


_BF16_RUN = """
import hashlib, numpy as np
{first}
from nbwoq import _arrays
w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32).astype(ml_dtypes.bfloat16)
assert _arrays.numpy_dtype_supported(w.dtype) and _arrays.kernel_view(w).dtype == np.int16
assert _arrays.BFLOAT16 == w.dtype
q = nbwoq.quant_tensor(w, bits=4, group_size=32)
assert q.dtype == w.dtype
print(hashlib.sha256(q.view(np.uint16).tobytes()).hexdigest())
"""


def test_bfloat16_takes_the_kernels_whichever_was_imported_first():
    pytest.importorskip("ml_dtypes")
    runs = [subprocess.run([sys.executable, "-c", _BF16_RUN.format(first=first)], check=True, capture_output=True,
                           text=True).stdout for first in ("import nbwoq, ml_dtypes", "import ml_dtypes, nbwoq")]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_other_dtypes_named_bfloat16_are_not_taken_for_ml_dtypes():
    from nbwoq import _arrays

    class Named:
        name = "bfloat16"

    assert not _arrays.is_bfloat16(Named())
    assert not _arrays.numpy_dtype_supported(np.dtype("int16"))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["unit", "wide", "tiny"]))
def test_sqrt_is_correctly_rounded_on_torch(seed, spread):
    """``_arrays.sqrt`` equals NumPy's IEEE ``sqrt`` bit for bit on torch arrays, whose own
    (SLEEF on CPU) returns a neighbour for about 0.8% of float64 values."""
    torch = pytest.importorskip("torch")
    import array_api_compat

    from nbwoq import _arrays

    rng = np.random.default_rng(seed)
    v = {"unit": lambda: rng.random(4096) * 10,
         "wide": lambda: np.exp(rng.uniform(-700, 700, 4096)),
         "tiny": lambda: rng.random(4096) * 1e-310}[spread]()
    v[:4] = (0.0, 5e-324, np.inf, 1.7976931348623157e308)
    t = torch.from_numpy(v.copy())
    got = _arrays.sqrt(t, array_api_compat.array_namespace(t)).numpy()
    assert np.array_equal(got, np.sqrt(v))


@pytest.mark.parametrize("func", ["refit_int", "refine_zero", "search_clip"])
@pytest.mark.parametrize("seed", range(4))
def test_torch_float64_twins_equal_the_kernels_under_magnitude_weighting(func, seed):
    """The twins' group rms goes through ``_arrays.sqrt``: with torch's own sqrt,
    ``refit_int`` on torch float64 arrays differed from the kernel in 19 of 30 seeds."""
    torch = pytest.importorskip("torch")
    import nbwoq

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((32, 200)) * np.exp(rng.uniform(-3, 3, (1, 200)))
    kw = dict(bits=4, group_size=32, weighting="magnitude")
    if func == "search_clip":
        kw["per_group"] = True
    f = getattr(nbwoq, func)
    a, t = w.copy(), torch.from_numpy(w.copy())
    out_a, out_t = f(a, **kw), f(t, **kw)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_t = out_t if isinstance(out_t, tuple) else (out_t,)
    assert np.array_equal(a, t.numpy())
    for x, y in zip(out_a, out_t):
        assert np.array_equal(np.asarray(x), y.numpy() if hasattr(y, "numpy") else np.asarray(y))
