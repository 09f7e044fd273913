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
