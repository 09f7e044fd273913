"""The per-tensor types of llama-quantize's file types and mixes (``gguf_mix``)."""

import pytest

from nbwoq.formats.errors import InputError
from nbwoq.formats.gguf_mix import FILE_TYPES, plan_types


def _llama(n_layer=32, cols=4096, tied=False):
    tensors = [("token_embd.weight", (32000, cols))]
    for i in range(n_layer):
        for kind in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                     "ffn_down"):
            cols_here = 11008 if kind == "ffn_down" else cols
            shape = (cols,) if kind.endswith("norm") else (cols, cols_here)
            tensors.append((f"blk.{i}.{kind}.weight", shape))
    tensors.append(("output_norm.weight", (cols,)))
    if not tied:
        tensors.append(("output.weight", (32000, cols)))
    return tensors


def _more_bits(i, n):  # written out independently of the module, from llama.cpp's rule
    return i < n / 8 or i >= 7 * n / 8 or (i - n / 8) % 3 == 2


def test_q4_k_m_on_llama_follows_llama_quantize():
    types = plan_types(_llama(), "Q4_K_M", "llama", 32)
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] is None and types["output_norm.weight"] is None
    for i in range(32):
        assert types[f"blk.{i}.attn_q.weight"] == "Q4_K"
        assert types[f"blk.{i}.attn_v.weight"] == ("Q6_K" if _more_bits(i, 32) else "Q4_K"), i
        assert types[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if _more_bits(i, 32) else "Q4_K"), i


def test_rows_not_splitting_into_256_fall_back_like_llama_quantize():
    types = plan_types(_llama(n_layer=30, cols=576), "Q4_K_M", "llama", 30)  # SmolLM2's width
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["output.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "Q6_K"  # its 11008-wide rows do split into 256s


def test_q4_k_s_and_q5_k_m_mixes():
    s = plan_types(_llama(cols=4096), "Q4_K_S", "llama", 32)
    assert [s[f"blk.{i}.attn_v.weight"] for i in range(6)] == ["Q5_K"] * 4 + ["Q4_K"] * 2
    m = plan_types(_llama(cols=4096), "Q5_K_M", "llama", 32)
    assert m["blk.0.attn_v.weight"] == "Q6_K" and m["blk.5.attn_v.weight"] == "Q5_K"


def test_tied_embeddings_take_the_output_type():
    types = plan_types(_llama(tied=True), "Q4_K_M", "llama", 32)
    assert types["token_embd.weight"] == "Q6_K"


def test_pure_gives_every_weight_the_default_type():
    types = plan_types(_llama(cols=4096), "Q4_K_M", "llama", 32, pure=True)
    assert {t for t in types.values() if t is not None} == {"Q4_K"}
    assert types["output.weight"] == "Q4_K"


def test_legacy_types_still_give_the_output_head_q6_k():
    types = plan_types(_llama(cols=4096), "Q4_0", "llama", 32)
    assert types["output.weight"] == "Q6_K" and types["blk.3.ffn_down.weight"] == "Q4_0"
    assert plan_types(_llama(cols=4096), "Q8_0", "llama", 32)["output.weight"] == "Q8_0"


def test_rows_that_fit_no_block_stay_f16():
    types = plan_types([("blk.0.attn_q.weight", (8, 100))], "Q4_K_M", "llama", 1)
    assert types["blk.0.attn_q.weight"] == "F16"


@pytest.mark.parametrize("name", ["q4_k_m", "Q8_0", "f16"])
def test_type_names_are_case_insensitive(name):
    assert plan_types([("blk.0.ffn_up.weight", (256, 256))], name, "llama", 1)["blk.0.ffn_up.weight"]


def test_unknown_type_is_one_clear_error():
    with pytest.raises(InputError, match="--type must be one of"):
        plan_types([], "Q3_K_XL", "llama", 1)


def test_every_file_type_id_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    for name, (ftype, _) in FILE_TYPES.items():
        key = "ALL_F32" if name == "F32" else f"MOSTLY_{name}"
        assert gguf.LlamaFileType[key].value == ftype, name


def test_layers_are_counted_in_llama_cpp_order_not_file_order():
    """llama.cpp counts attn_v/ffn_down by layer number (its loader's name order), so a file
    whose tensors are stored blk.0, blk.1, blk.10, blk.11, ... gets the same mix (SmolLM2's
    GGUF is stored that way)."""
    ordered = _llama(n_layer=30)
    by_name = sorted(ordered, key=lambda t: t[0])
    assert [n for n, _ in by_name] != [n for n, _ in ordered]
    a = plan_types(ordered, "Q4_K_M", "llama", 30)
    b = plan_types(by_name, "Q4_K_M", "llama", 30)
    assert a == b and list(b) == [n for n, _ in by_name]
    more = [i for i in range(30) if a[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]  # llama-quantize's choice on SmolLM2
    assert [i for i in range(30) if a[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more
