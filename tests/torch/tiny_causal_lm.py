"""Tiny causal language models of real architectures, built offline from configs, for
the tests of absorb plans and column folds (one home for their sizes and perturbation)."""

import numpy as np
import torch
import transformers

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, use_cache=False)

# name -> (config class, overrides)
MODELS = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=24, tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", dict(head_dim=16)),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=4)),
    # attention layouts: one key/value head per query head, and one for all of them
    "llama-mha": ("LlamaConfig", dict(num_key_value_heads=4)),
    "llama-mqa": ("LlamaConfig", dict(num_key_value_heads=1)),
}


def build(name, spread_columns=False):
    """The float32 model ``name`` of ``MODELS``, seeded: its norms and biases moved away
    from their initial values (so a wrong fold shows); ``spread_columns``: the columns of
    every projection also scaled by a lognormal factor each (something for a column
    scale to do)."""
    cls, overrides = MODELS[name]
    config = getattr(transformers, cls)(**{**SMALL, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    gen = np.random.default_rng(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
            elif spread_columns and "proj" in pname:
                p.mul_(torch.from_numpy(gen.lognormal(0, 1, p.shape[1]).astype(np.float32))[None, :])
    return model
