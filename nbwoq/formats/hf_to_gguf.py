"""Hugging Face folder -> GGUF: tensor names, row order, stored values and metadata.

One class per architecture family, registered in ``CONVERSIONS`` by ``config.json``'s
``model_type``. A conversion knows the family's rules that llama.cpp's converter applies
(``convert_hf_to_gguf.py``, read for the facts): GGUF tensor names (through gguf-py's
tensor-name map), the query/key row permutation of the rotary layout where the family
needs it, values changed on the way (none for Llama), the key/values of the file and the
tokenizer. Any other ``model_type`` is one ``InputError`` naming llama.cpp's converter.
"""

import os

import numpy as np

from nbwoq.formats import storage
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.hf_config import llama_shape
from nbwoq.formats.source import read_json


def _is_index(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 31)


def _rotary_permutation(rows, n_head):
    """Row order llama.cpp expects for a query/key projection (rotary halves interleaved)."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


class LlamaConversion:
    """Llama (and the families llama.cpp converts the same way)."""

    arch = "llama"
    model_arch = "LLAMA"  # gguf.MODEL_ARCH member
    permute_qk = True

    def __init__(self, source, gguf):
        self.source, self.gguf = source, gguf
        self.config = source.config
        self.shape = llama_shape(self.config)
        self.name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, self.model_arch), self.shape["layers"])

    def counts(self):
        """``(layers, heads, kv_heads, experts)`` for llama.cpp's mix rules."""
        experts = self.config.get("num_local_experts", 1)
        experts = experts if _is_index(experts) and experts > 0 else 1
        return self.shape["layers"], self.shape["heads"], self.shape["kv_heads"], experts

    def out_name(self, info):
        name = self.name_map.get_name(info.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise InputError(f"--format gguf: no GGUF name for tensor {printable(info.name)} ({self.arch})")
        return name

    def permutation(self, info):
        """Row order of tensor ``info`` in the file (None: as stored)."""
        if not self.permute_qk:
            return None
        heads = None
        if info.name.endswith("q_proj.weight"):
            heads = self.shape["heads"]
        elif info.name.endswith("k_proj.weight"):
            heads = self.shape["kv_heads"]
        if heads is None:
            return None
        if info.shape[0] % (2 * heads):
            raise InputError(f"tensor {printable(info.name)} has {info.shape[0]} rows, not a whole number of "
                             f"rotary halves for {heads} heads (config.json)")
        return _rotary_permutation(info.shape[0], heads)

    def copy_dtype(self, info):
        """The stored dtype of an unquantized tensor: 1-D halves (norms, biases) widen to
        float32, as llama.cpp keeps them."""
        if len(info.shape) == 1 and info.dtype in ("F16", "BF16"):
            return "F32"
        return info.dtype

    def values(self, info, array, dtype_name):
        """The values an unquantized tensor is stored with, when they differ from the
        source's bytes (else None)."""
        if self.copy_dtype(info) == "F32" and dtype_name != "F32":
            return storage.widen(array, dtype_name)
        return None

    def metadata(self, gguf_writer):
        shape = self.shape
        gguf_writer.add_name(os.path.basename(os.path.abspath(self.source.path)))
        gguf_writer.add_context_length(shape["context"])
        gguf_writer.add_embedding_length(shape["hidden"])
        gguf_writer.add_block_count(shape["layers"])
        gguf_writer.add_feed_forward_length(shape["ffn"])
        gguf_writer.add_head_count(shape["heads"])
        gguf_writer.add_head_count_kv(shape["kv_heads"])
        gguf_writer.add_rope_freq_base(shape["rope_theta"])
        gguf_writer.add_layer_norm_rms_eps(shape["rms_eps"])
        gguf_writer.add_rope_dimension_count(shape["head_dim"])
        gguf_writer.add_vocab_size(shape["vocab"])
        self.tokenizer(gguf_writer)

    def tokenizer(self, gguf_writer):
        """A byte-level BPE ``tokenizer.json`` becomes GGUF's ``gpt2`` tokenizer; none is fine.
        Every entry is checked: a malformed tokenizer is one ``InputError``."""
        cfg = self.config
        path = os.path.join(self.source.folder, "tokenizer.json")
        if not os.path.isfile(path):
            return
        tok = read_json(path, "tokenizer.json")
        model = tok.get("model") if isinstance(tok, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            return
        vocab, added_tokens, merges = model.get("vocab"), tok.get("added_tokens", []), model.get("merges", [])
        n = self.shape["vocab"]
        if not (isinstance(vocab, dict) and all(isinstance(t, str) and _is_index(i) for t, i in vocab.items())
                and isinstance(added_tokens, list)
                and all(isinstance(a, dict) and _is_index(a.get("id")) and isinstance(a.get("content"), str)
                        for a in added_tokens)
                and isinstance(merges, list)
                and all(isinstance(m, str) or (isinstance(m, list) and all(isinstance(p, str) for p in m))
                        for m in merges)):
            raise InputError(f"{path}: not a BPE tokenizer this converter understands (malformed vocab, "
                             "added_tokens or merges)")
        token_type = self.gguf.TokenType
        tokens = [""] * n
        types = [token_type.UNUSED] * n
        for text, idx in vocab.items():
            if idx < n:
                tokens[idx], types[idx] = text, token_type.NORMAL
        for added in added_tokens:
            if added["id"] < n:
                tokens[added["id"]] = added["content"]
                types[added["id"]] = token_type.CONTROL if added.get("special") else token_type.USER_DEFINED
        for i, t in enumerate(tokens):
            if not t:
                tokens[i] = f"[PAD{i}]"
        gguf_writer.add_tokenizer_model("gpt2")
        gguf_writer.add_tokenizer_pre("default")
        gguf_writer.add_token_list(tokens)
        gguf_writer.add_token_types(types)
        gguf_writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        for key, setter in (("bos_token_id", gguf_writer.add_bos_token_id), ("eos_token_id", gguf_writer.add_eos_token_id)):
            if _is_index(cfg.get(key)) and cfg[key] < n:
                setter(cfg[key])


#: ``config.json`` model_type -> conversion class. Adding a family: a class and a line.
CONVERSIONS = {"llama": LlamaConversion}


def conversion(source, gguf):
    """The conversion of Hugging Face folder ``source``, or ``InputError`` saying why not."""
    cfg = source.config
    if not cfg:
        raise InputError("--format gguf from safetensors needs the source folder's config.json")
    model_type = cfg.get("model_type")
    cls = CONVERSIONS.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        raise InputError(f"--format gguf from a Hugging Face folder supports model_type {', '.join(CONVERSIONS)}; "
                         f"config.json has {model_type!r}: convert it with llama.cpp's convert_hf_to_gguf.py, "
                         "then quantize the GGUF with nbwoq")
    return cls(source, gguf)
