"""Hugging Face folder -> GGUF: tensor names, row order, stored values and metadata.

One class per architecture family, registered in ``CONVERSIONS`` by ``config.json``'s
``model_type``. A conversion knows the family's rules that llama.cpp's converter applies
(``convert_hf_to_gguf.py``, read for the facts): GGUF tensor names (through gguf-py's
tensor-name map), the query/key row permutation of the rotary layout where the family
needs it, values changed on the way (none for Llama), the key/values of the file, tensors
llama.cpp adds (Llama 3 rope scaling's ``rope_freqs.weight``) and the tokenizer: a
SentencePiece ``tokenizer.model`` as llama.cpp's ``llama`` tokenizer (``hf_vocab``), a
byte-level BPE ``tokenizer.json`` as ``gpt2`` with the pre-tokenizer name its declared
split has in llama.cpp (``bpe_pre``). Any other ``model_type`` is one
``InputError`` naming llama.cpp's converter.
"""

import os

import numpy as np

from nbwoq.formats import bpe_pre, hf_vocab, storage
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.hf_config import (config_float, config_int, config_optional_float, config_optional_int,
                                    llama_shape, rope_parameters, rope_theta)
from nbwoq.formats.source import read_json


def _is_index(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 31)


def _space_free(part):
    """A merge half of the list form (transformers >= 4.45) with each space written as
    U+0120 (space + 256), as gguf-py writes it: the GGUF form splits on the one space."""
    return part.replace(" ", chr(ord(" ") + 256))


def _rotary_permutation(rows, n_head):
    """Row order llama.cpp expects for a query/key projection (rotary halves interleaved)."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


class LlamaConversion:
    """Llama (and the families llama.cpp converts the same way)."""

    arch = "llama"
    model_arch = "LLAMA"  # gguf.MODEL_ARCH member
    permute_qk = True
    special_ids_always = False  # Llama: special ids only beside a tokenizer
    skip_byte_fallback = False
    rope_llama3 = True  # llama.cpp writes rope_freqs.weight for Llama 3 rope scaling (Llama's converter only)

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
        self.family_metadata(gguf_writer)
        # llama.cpp writes gguf-py's special vocabulary for both tokenizers (ids, add flags, chat template)
        if self.tokenizer(gguf_writer) or self.special_ids_always:
            hf_vocab.write_special_vocab(gguf_writer, self.source.folder, self.config, shape["vocab"])

    def family_metadata(self, gguf_writer):
        """The family's keys after the shared ones (Llama: rotary dimensions, vocabulary
        size, rope scaling)."""
        gguf_writer.add_rope_dimension_count(self.shape["head_dim"])
        gguf_writer.add_vocab_size(self.shape["vocab"])
        _rope_scaling(self, gguf_writer, rope_parameters(self.config))

    def extra_tensors(self):
        """``[(GGUF name, float32 array)]``: tensors llama.cpp's converter adds that the
        folder does not hold (Llama 3 rope scaling: ``rope_freqs.weight``)."""
        params = rope_parameters(self.config)
        if not self.rope_llama3 or _rope_kind(params) != "llama3":
            return []
        name = self.gguf.TENSOR_NAMES[self.gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return [(name, llama3_rope_factors(params, self.shape["head_dim"], self.shape["rope_theta"]))]

    def tokenizer(self, gguf_writer):
        """The folder's tokenizer, as llama.cpp's converter picks it for Llama: a
        ``tokenizer.model`` (SentencePiece) becomes GGUF's ``llama`` tokenizer, else a
        byte-level BPE ``tokenizer.json`` becomes ``gpt2``; none is fine. Returns what was
        written: ``"llama"``, ``"gpt2"`` or None."""
        cfg = hf_vocab.side_file(self.source.folder, "tokenizer_config.json")
        if isinstance(cfg, dict) and isinstance(cfg.get("add_prefix_space"), bool):
            gguf_writer.add_add_space_prefix(cfg["add_prefix_space"])
        if self.has_sentencepiece():
            return self.sentencepiece_tokenizer(gguf_writer)
        return self.json_tokenizer(gguf_writer)

    def has_sentencepiece(self):
        return os.path.isfile(os.path.join(self.source.folder, "tokenizer.model"))

    def sentencepiece_tokenizer(self, gguf_writer, phi3=False):
        """``tokenizer.model`` (and the added tokens of the side files) as GGUF's ``llama``
        tokenizer (``hf_vocab``); the special ids follow in ``metadata``."""
        tokens, scores, types = hf_vocab.sentencepiece_vocab(self.source.folder, self.shape["vocab"], phi3=phi3)
        gguf_writer.add_tokenizer_model("llama")
        gguf_writer.add_tokenizer_pre("default")
        gguf_writer.add_token_list(tokens)
        gguf_writer.add_token_scores(scores)
        gguf_writer.add_token_types(types)
        return "llama"

    def json_tokenizer(self, gguf_writer):
        """A byte-level BPE ``tokenizer.json`` becomes GGUF's ``gpt2`` tokenizer, its
        pre-tokenizer named as llama.cpp knows it (``bpe_pre``). Every entry is checked: a
        malformed tokenizer, or a pre-tokenizer llama.cpp has no name for, is one
        ``InputError``; a SentencePiece-style one (Unigram, or BPE with byte fallback) without
        its ``tokenizer.model`` is one too."""
        path = os.path.join(self.source.folder, "tokenizer.json")
        if not os.path.isfile(path):
            return None
        tok = read_json(path, "tokenizer.json")
        model = tok.get("model") if isinstance(tok, dict) else None
        if not isinstance(model, dict):
            return None
        if model.get("type") == "Unigram" or (model.get("type") == "BPE" and model.get("byte_fallback")):
            if self.skip_byte_fallback:
                return None
            raise InputError(f"{printable(path)}: a SentencePiece vocabulary ({printable(model.get('type'))}"
                             f"{' with byte fallback' if model.get('byte_fallback') else ''}) is converted from its "
                             "tokenizer.model, which the folder lacks; add the model repository's tokenizer.model "
                             "(llama.cpp's convert_hf_to_gguf.py needs it too)")
        if model.get("type") != "BPE":
            return None
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
        pre = bpe_pre.pre_tokenizer_name(tok, path)
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
        gguf_writer.add_tokenizer_pre(pre)
        gguf_writer.add_token_list(tokens)
        gguf_writer.add_token_types(types)
        gguf_writer.add_token_merges([m if isinstance(m, str) else " ".join(map(_space_free, m)) for m in merges])
        return "gpt2"


def _rope_kind(params):
    kind = params.get("rope_type", params.get("type", "default"))
    return kind.lower() if isinstance(kind, str) else kind


def llama3_rope_factors(params, head_dim, theta):
    """Llama 3's rope scaling as llama.cpp applies it: one factor per rotary pair that
    divides its frequency (``rope_freqs.weight``, ``head_dim / 2`` float32 values). Pairs
    whose wavelength is below ``original_max_position_embeddings / high_freq_factor``
    keep theirs (1), those above ``/ low_freq_factor`` are divided by ``factor``, and
    the ones between blend the two smoothly. Computed in float32, as llama.cpp's converter."""
    factor = config_float(params, "factor", 8.0)
    low = config_float(params, "low_freq_factor", 1.0)
    high = config_float(params, "high_freq_factor", 4.0)
    orig = config_int(params, "original_max_position_embeddings", 1, 1 << 26, default=8192)
    if high < low:
        raise InputError(f"config.json: llama3 rope scaling needs high_freq_factor ({high:g}) at least "
                         f"low_freq_factor ({low:g})")
    f32 = np.float32
    exponent = np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)
    freqs = f32(1.0) / np.power(f32(theta), exponent, dtype=f32)
    wavelen = f32(2 * np.pi) / freqs
    with np.errstate(divide="ignore", invalid="ignore"):  # high == low (Llama 4): no pair in between
        smooth = (f32(orig) / wavelen - f32(low)) / f32(high - low)
        blended = f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth)
    out = np.where(wavelen < f32(orig / high), f32(1.0), np.where(wavelen > f32(orig / low), f32(factor), blended))
    return out.astype(np.float32)

def _rope_scaling(conv, gguf_writer, params):
    """Rope scaling llama.cpp represents by keys (none, linear, YaRN) or, for Llama, by
    the ``rope_freqs.weight`` tensor (llama3); any other kind needs tensors or rules this
    converter does not write: one ``InputError``."""
    kind = _rope_kind(params)
    if kind in (None, "default") or (kind == "llama3" and conv.rope_llama3):
        return  # llama3: no keys, the factors are the rope_freqs.weight tensor (extra_tensors)
    scaling = conv.gguf.RopeScalingType
    if kind == "linear":
        gguf_writer.add_rope_scaling_type(scaling.LINEAR)
        gguf_writer.add_rope_scaling_factor(config_float(params, "factor", None))
    elif kind == "yarn":
        gguf_writer.add_rope_scaling_type(scaling.YARN)
        gguf_writer.add_rope_scaling_factor(config_float(params, "factor", None))
        orig = params.get("original_max_position_embeddings", conv.config.get("original_max_position_embeddings"))
        if orig is not None:
            gguf_writer.add_rope_scaling_orig_ctx_len(config_int({"original_max_position_embeddings": orig},
                                                                 "original_max_position_embeddings", 1, 1 << 26))
    else:
        raise InputError(f"config.json: rope scaling {printable(str(kind))} is not converted here ({conv.arch}); "
                         "convert the folder with llama.cpp's convert_hf_to_gguf.py")


class MistralConversion(LlamaConversion):
    """Mistral: llama.cpp converts ``MistralForCausalLM`` as ``llama`` (same names, the same
    query/key permutation, same keys). Its ``sliding_window`` is not written, as in llama.cpp;
    transformers reads the file back as Mistral when ``general.name`` contains "mistral"."""


class Qwen2Conversion(LlamaConversion):
    """Qwen2: ``qwen2``; NeoX rotary layout (no permutation); q/k/v biases (1-D, float32);
    tied embeddings leave no ``lm_head.weight`` and so no ``output.weight``."""

    arch, model_arch = "qwen2", "QWEN2"
    permute_qk = False
    special_ids_always = True  # config.json's ids even without a tokenizer
    skip_byte_fallback = True
    rope_llama3 = False

    def tokenizer(self, gguf_writer):
        """Qwen's tokenizer is byte-level BPE: ``tokenizer.json`` only, as llama.cpp's
        converter reads it."""
        return self.json_tokenizer(gguf_writer)

    def family_metadata(self, gguf_writer):
        # llama.cpp counts the token list; transformers' loader needs the key without one
        gguf_writer.add_vocab_size(self.shape["vocab"])
        _rope_scaling(self, gguf_writer, rope_parameters(self.config))


class Qwen3Conversion(Qwen2Conversion):
    """Qwen3: as Qwen2 (``qwen3``), plus per-head ``q_norm``/``k_norm`` (``attn_q_norm``,
    ``attn_k_norm``) and an explicit ``head_dim`` (key/value lengths)."""

    arch, model_arch = "qwen3", "QWEN3"

    def family_metadata(self, gguf_writer):
        if self.config.get("head_dim") is not None:
            gguf_writer.add_key_length(self.shape["head_dim"])
            gguf_writer.add_value_length(self.shape["head_dim"])
        super().family_metadata(gguf_writer)


class Gemma2Conversion(Qwen2Conversion):
    """Gemma 2: ``gemma2``; no permutation; every ``*norm.weight`` is stored plus 1 (the
    Hugging Face RMSNorm multiplies by ``1 + w``, llama.cpp's by ``w``); the output is the
    tied token embedding (llama.cpp's gemma2 has no ``output.weight``); key/value lengths,
    both logit soft-caps and the sliding window are keys."""

    arch, model_arch = "gemma2", "GEMMA2"
    skip_byte_fallback = False

    def tokenizer(self, gguf_writer):
        """``tokenizer.model`` as the ``llama`` tokenizer with no space prefix (llama.cpp's
        Gemma converters), else ``tokenizer.json`` as for Llama."""
        if not self.has_sentencepiece():
            return self.json_tokenizer(gguf_writer)
        written = self.sentencepiece_tokenizer(gguf_writer)
        gguf_writer.add_add_space_prefix(False)
        return written

    def out_name(self, info):
        if info.name == "lm_head.weight":
            raise InputError(f"{self.arch}: the folder has lm_head.weight, but llama.cpp's {self.arch} ties the "
                             "output to the token embedding; remove it or convert with llama.cpp's "
                             "convert_hf_to_gguf.py")
        return super().out_name(info)

    def norm_shift(self, info):
        return 1.0 if info.name.endswith("norm.weight") else 0.0

    def values(self, info, array, dtype_name):
        shift = self.norm_shift(info)
        if not shift:
            return super().values(info, array, dtype_name)
        if len(info.shape) != 1:
            raise InputError(f"tensor {printable(info.name)}: a norm must be 1-D, got shape {list(info.shape)}")
        out = storage.widen(array, dtype_name)  # a float32 copy
        out += np.float32(shift)
        return out

    def _check_query_scale(self):
        """llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B
        models); another ``query_pre_attn_scalar`` cannot be represented."""
        scalar = config_optional_float(self.config, "query_pre_attn_scalar")
        shape = self.shape
        if scalar is not None and scalar not in (shape["head_dim"], shape["hidden"] / shape["heads"]):
            raise InputError(f"config.json: query_pre_attn_scalar {scalar:g} is neither head_dim ({shape['head_dim']}) "
                             f"nor hidden_size / num_attention_heads; llama.cpp's {self.arch} cannot represent it")

    def family_metadata(self, gguf_writer):
        self._check_query_scale()
        gguf_writer.add_key_length(self.shape["head_dim"])
        gguf_writer.add_value_length(self.shape["head_dim"])
        for key, setter in (("attn_logit_softcapping", gguf_writer.add_attn_logit_softcapping),
                            ("final_logit_softcapping", gguf_writer.add_final_logit_softcapping)):
            value = config_optional_float(self.config, key)
            if value is not None:
                setter(value)
        window = config_optional_int(self.config, "sliding_window", 1, 1 << 26)
        if window is not None:
            gguf_writer.add_sliding_window(window)
        gguf_writer.add_vocab_size(self.shape["vocab"])


class Gemma3Conversion(Gemma2Conversion):
    """Gemma 3 text (``gemma3_text``): as Gemma 2 (``gemma3``; ``q_norm``/``k_norm`` are norms
    too, so plus 1) with no attention soft-cap; the rope base is the global layers' one
    (``rope.freq_base``), a local one other than llama.cpp's 10000 is ``rope.freq_base_swa``;
    linear rope scaling is written; an ``lm_head.weight`` becomes ``output.weight``."""

    arch, model_arch = "gemma3", "GEMMA3"

    def out_name(self, info):
        return LlamaConversion.out_name(self, info)

    def family_metadata(self, gguf_writer):
        self._check_query_scale()
        if self.config.get("attn_logit_softcapping") is not None:
            raise InputError("config.json: gemma3 has no attention logit soft-capping, got attn_logit_softcapping "
                             f"{self.config['attn_logit_softcapping']!r}")
        gguf_writer.add_key_length(self.shape["head_dim"])
        gguf_writer.add_value_length(self.shape["head_dim"])
        final = config_optional_float(self.config, "final_logit_softcapping")
        if final is not None:
            gguf_writer.add_final_logit_softcapping(final)
        window = config_optional_int(self.config, "sliding_window", 1, 1 << 26)
        if window is not None and self.config.get("sliding_window_pattern") != 1:
            gguf_writer.add_sliding_window(window)
        local = rope_theta(self.config, 10000.0, "sliding_attention")
        if "rope_local_base_freq" in self.config:
            local = config_float(self.config, "rope_local_base_freq", 10000.0)
        if local != 10000.0:
            gguf_writer.add_rope_freq_base_swa(local)
        _rope_scaling(self, gguf_writer, rope_parameters(self.config))
        gguf_writer.add_vocab_size(self.shape["vocab"])


class Phi3Conversion(Qwen2Conversion):
    """Phi-3: ``phi3``; NeoX rotary layout (no permutation); the fused ``qkv_proj`` and
    ``gate_up_proj`` are kept fused, as llama.cpp keeps them (``attn_qkv``, ``ffn_up``: its
    graph splits them), so quantized rows need no change; rotary dimensions follow
    ``partial_rotary_factor``; a sliding window of 0 means none. LongRoPE (``rope_scaling``)
    needs factor tensors that are not in the folder: one ``InputError``."""

    arch, model_arch = "phi3", "PHI3"
    skip_byte_fallback = False

    def tokenizer(self, gguf_writer):
        """As llama.cpp's Phi-3 converter: a ``GPT2Tokenizer`` (Phi-4) is ``tokenizer.json``'s
        BPE; else ``tokenizer.model`` with Phi-3's added-token rules (``hf_vocab``)."""
        cfg = hf_vocab.side_file(self.source.folder, "tokenizer_config.json")
        if (isinstance(cfg, dict) and cfg.get("tokenizer_class") == "GPT2Tokenizer") or not self.has_sentencepiece():
            return self.json_tokenizer(gguf_writer)
        return self.sentencepiece_tokenizer(gguf_writer, phi3=True)

    def out_name(self, info):
        name = super().out_name(info)
        shape = self.shape
        rows = {"qkv_proj.weight": (shape["heads"] + 2 * shape["kv_heads"]) * shape["head_dim"],
                "gate_up_proj.weight": 2 * shape["ffn"]}
        for suffix, want in rows.items():
            if info.name.endswith(suffix) and info.shape[0] != want:
                raise InputError(f"tensor {printable(info.name)} has {info.shape[0]} rows, config.json says {want}")
        return name

    def family_metadata(self, gguf_writer):
        cfg, shape = self.config, self.shape
        params = rope_parameters(cfg)
        if params.get("rope_type", params.get("type", "default")) not in (None, "default"):
            raise InputError("config.json: Phi-3 rope scaling (LongRoPE) needs rope factor tensors this converter "
                             "does not write; convert the folder with llama.cpp's convert_hf_to_gguf.py")
        orig = cfg.get("original_max_position_embeddings", params.get("original_max_position_embeddings"))
        if orig is not None:
            gguf_writer.add_rope_scaling_orig_ctx_len(
                config_int({"original_max_position_embeddings": orig}, "original_max_position_embeddings", 1, 1 << 26))
        factor = cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
        factor = config_float({"partial_rotary_factor": factor}, "partial_rotary_factor", 1.0)
        if factor > 1:
            raise InputError(f"config.json: partial_rotary_factor must be at most 1, got {factor!r}")
        gguf_writer.add_rope_dimension_count(int(factor * shape["hidden"]) // shape["heads"])
        gguf_writer.add_sliding_window(config_optional_int(cfg, "sliding_window", 1, 1 << 26) or 0)
        gguf_writer.add_vocab_size(shape["vocab"])


#: ``config.json`` model_type -> conversion class. Adding a family: a class and a line.
CONVERSIONS = {"llama": LlamaConversion, "mistral": MistralConversion, "qwen2": Qwen2Conversion,
               "qwen3": Qwen3Conversion, "gemma2": Gemma2Conversion, "gemma3_text": Gemma3Conversion,
               "phi3": Phi3Conversion}


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
