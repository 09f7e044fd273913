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


def _nbwoq_file(tmp_path, meta_edit):
    """A one-tensor nbwoq-format file whose tensor metadata went through ``meta_edit``."""
    import json

    from nbwoq.formats import safetensors_io as st

    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    good = str(tmp_path / "good.safetensors")
    nbwoq.save({"a.weight": w}, good, bits=4, group_size=16)
    tensors, metadata = st.read_header(good)
    meta = json.loads(metadata["nbwoq.tensors"])
    meta_edit(meta["a.weight"])
    metadata["nbwoq.tensors"] = json.dumps(meta)
    arrays = []
    for name, info in tensors.items():
        with st.TensorMap(info) as a:
            arrays.append((name, info.dtype, np.array(a)))
    bad = str(tmp_path / "bad.safetensors")
    st.save_file(bad, arrays, metadata)
    return bad


@pytest.mark.parametrize("edit", [
    # the decoding kernel read far beyond the stored codes and scales (no bounds checks)
    pytest.param(lambda m: m.update(shape=[400, 640]), id="shape-beyond-codes"),
    pytest.param(lambda m: m.update(slot=3), id="impossible-slot"),
    pytest.param(lambda m: m.update(group_size=0), id="group-size-0"),
    pytest.param(lambda m: m.update(qmin=-100), id="qmin-beyond-lut"),
    pytest.param(lambda m: m.update(codebook="nf4"), id="codebook-without-its-qmin"),
    # these raised KeyError / an unpacking ValueError naming nothing
    pytest.param(lambda m: m.pop("shape"), id="no-shape"),
    pytest.param(lambda m: m.update(codebook="zz"), id="unknown-codebook"),
    pytest.param(lambda m: m.update(shape=[4]), id="1-d-shape"),
])
def test_load_refuses_inconsistent_metadata(tmp_path, edit):
    path = _nbwoq_file(tmp_path, edit)
    with pytest.raises(ValueError, match="corrupt"):
        nbwoq.load(path)


def test_dequantize_refuses_inconsistent_quantized_tensor(tmp_path):
    q = nbwoq.load(_nbwoq_file(tmp_path, lambda m: None))["a.weight"]
    q.meta = dict(q.meta, shape=[400, 640])
    q.shape = (400, 640)
    with pytest.raises(ValueError, match="codes must be"):
        nbwoq.dequantize(q)
