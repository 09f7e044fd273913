"""Bugs the fuzzers found, each pinned by the smallest example that showed it."""

import numpy as np
import pytest

import nbwoq

xp = pytest.importorskip("array_api_strict")


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(group_size=1), id="int-g1"),
    pytest.param(dict(group_size=2, scheme="sym", return_int=True), id="int-sym-tail"),
    pytest.param(dict(dtype="nf4"), id="nf4"),
    pytest.param(dict(group_size=2, double_quant=True), id="double-quant"),
])
def test_reference_path_zero_rows(kwargs):
    # The twins reshaped each group's result to (rows, -1), which is ambiguous when
    # rows == 0 (NumPy raises, torch raises RuntimeError); the Numba path was fine.
    w = xp.asarray(np.zeros((0, 5), np.float32))
    result = nbwoq.quant_tensor(w, **kwargs)
    out = result[0] if isinstance(result, tuple) else result
    assert out is w and out.shape == (0, 5)


def test_reference_path_zero_rows_given_scale():
    w = xp.asarray(np.zeros((0, 5), np.float32))
    assert nbwoq.quant_weight_w_scale(w, xp.asarray(np.zeros((0, 1), np.float32))) is w


@pytest.mark.parametrize("full_range", [0, 1, "yes", None], ids=repr)
def test_actor_asym_refuses_bad_full_range(full_range):
    # qdq_weight_actor validated full_range on its codebook and sym branches but passed
    # the asym branch straight to qdq_weight_asym, which has no full_range: a bad value
    # was silently accepted there.
    w = np.linspace(-1, 1, 17, dtype=np.float32).reshape(1, 17)
    before = w.copy()
    with pytest.raises(TypeError, match="full_range"):
        nbwoq.qdq_weight_actor(w, 3, "asym", full_range=full_range)
    assert np.array_equal(w, before)
