"""torch-face bugs the fuzzers found, each pinned by the smallest example that showed it."""

import pytest

torch = pytest.importorskip("torch")
nbwoq_torch = pytest.importorskip("nbwoq_torch")


def _weights():
    return {
        # item() in the finiteness check: RuntimeError "cannot be called on meta tensors"
        "meta": (lambda: torch.randn(4, 8, device="meta"), ValueError, "meta device"),
        # isfinite: NotImplementedError for Float8_e4m3fn ("real floating" to array_api_compat)
        "float8": (lambda: torch.ones(2, 8).to(torch.float8_e4m3fn), TypeError, "float8_e4m3fn"),
        # contiguous(): RuntimeError "unsupported memory format option Contiguous"; COO
        # was also misreported as overlapping memory
        "sparse-coo": (lambda: torch.ones(2, 8).to_sparse(), TypeError, "sparse_coo"),
        # is_contiguous(): RuntimeError "Sparse CSR tensors do not have is_contiguous"
        "sparse-csr": (lambda: torch.ones(2, 8).to_sparse_csr(), TypeError, "sparse_csr"),
        # numpy(): RuntimeError "Can't call numpy() on Tensor that has negative bit set"
        "neg-view": (lambda: torch.ones(2, 8)._neg_view(), ValueError, "resolve_neg"),
    }


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("kind", list(_weights()))
@pytest.mark.parametrize("func", ["quant_tensor", "quantize_4bit", "search_clip"])
def test_unusable_tensors_refused(kind, func):
    make, exc, match = _weights()[kind]
    w = make()
    with pytest.raises(exc, match=match):
        if func == "search_clip":
            m = torch.nn.Module()
            m.__dict__["weight"] = w
            nbwoq_torch.search_clip(m, group_size=4)
        else:
            getattr(nbwoq_torch, func)(w)


def test_reference_path_refuses_overlapping_tensor_up_front():
    # The overlap check ran on the kernel path only: on the reference path (CUDA tensors)
    # the core validated everything and then torch raised RuntimeError on the write.
    from nbwoq_torch._interop import reference_path

    w = torch.arange(8.0).reshape(1, 8).expand(3, 8)
    with reference_path(), pytest.raises(ValueError, match="share memory"):
        nbwoq_torch.quant_tensor(w, group_size=4)


def test_reference_path_refuses_numpy_quantile():
    # A NumPy quantile array with a tensor on the reference path reached xp.astype and
    # raised AttributeError ("'numpy.ndarray' object has no attribute 'to'"); scale= and
    # zp= already said what they expect. The kernel path still takes it.
    import numpy as np

    from nbwoq_torch._interop import reference_path

    q = np.full((3, 2), 0.9, np.float32)
    w = torch.randn(3, 8)
    before = w.clone()
    with reference_path(), pytest.raises(TypeError, match="quantile as an array must be of the weight's kind"):
        nbwoq_torch.quant_tensor(w, group_size=4, quantile=q)
    assert torch.equal(w, before)
    assert nbwoq_torch.quant_tensor(w, group_size=4, quantile=q) is w


@pytest.mark.parametrize("key", ["__class__.layers", "0.weight.extra", "training.x"])
def test_set_module_only_sets_into_modules(key):
    # set_module walked "__class__" to torch.nn.Module itself and set the attribute on the
    # class, for every module of the process (found when later lookups of "0" succeeded
    # on models without it).
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    before = set(vars(torch.nn.Module)), set(vars(type(model)))
    with pytest.raises(TypeError, match="not a module"):
        nbwoq_torch.set_module(model, key, torch.nn.Identity())
    assert (set(vars(torch.nn.Module)), set(vars(type(model)))) == before
