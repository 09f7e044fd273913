"""The built-in default checkpoint: a deterministic, generated Llama-shaped model.

``python -m nbwoq`` with no source quantizes this, so the main job runs on a fresh
machine with nothing downloaded. Weights are Gaussian with a few large outliers (about
0.1% of each linear weight at 8-20 sigma), which is what makes clipping and group size
matter on real checkpoints. The same arguments always give the same bytes.

Tensors are generated and written one at a time, so a 1B-parameter checkpoint needs
memory for one tensor, not the model.
"""

import json
import os

import numpy as np

from nbwoq.formats import safetensors_io as st

#: The default: small enough to generate and quantize in seconds, shaped like Llama.
DEFAULT = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
               num_key_value_heads=4, vocab_size=4096)
#: About 1.1B parameters (TinyLlama's shape), for the end-to-end benchmark.
ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000)

_OUTLIER_FRACTION = 1e-3


def llama_config(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
                 vocab_size, dtype="bfloat16"):
    """A ``config.json`` dict that transformers' ``LlamaForCausalLM`` accepts."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": hidden_size // num_attention_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def tensor_shapes(config):
    """``[(name, shape), ...]`` of a Llama checkpoint, in transformers' naming and order."""
    h, f = config["hidden_size"], config["intermediate_size"]
    hd = config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = [("model.embed_tokens.weight", (config["vocab_size"], h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (config["vocab_size"], h))]
    return shapes


def _bf16_bits(x):
    """float32 -> bfloat16 bit pattern, round to nearest even (finite input)."""
    u = x.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def generate_tensor(name, shape, seed):
    """The float32 values of one tensor; depends only on ``name``, ``shape`` and ``seed``."""
    rng = np.random.default_rng([seed, *name.encode()])
    if len(shape) == 1:  # norms: around 1, as trained models have them
        return (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = shape[1]
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(1.0 / np.sqrt(fan_in))
    n_out = max(1, int(w.size * _OUTLIER_FRACTION))
    flat = w.reshape(-1)
    idx = rng.integers(0, w.size, n_out)
    flat[idx] *= rng.uniform(8.0, 20.0, n_out).astype(np.float32)
    return w


def write_checkpoint(folder, seed=0, dtype="bfloat16", shard_bytes=2 * 1024**3, **shape):
    """Write a generated Llama checkpoint (``config.json``, safetensors shards, index).

    Parameters
    ----------
    folder : str
        Created if missing.
    seed : int, default 0
    dtype : {"bfloat16", "float16", "float32"}, default "bfloat16"
    shard_bytes : int
        Largest shard size; several shards get a ``model.safetensors.index.json``.
    **shape
        Overrides of ``DEFAULT`` (``hidden_size``, ``num_hidden_layers``, ...).

    Returns
    -------
    str
        ``folder``.

    Examples
    --------
    >>> import tempfile, os
    >>> from nbwoq.command.demo_model import write_checkpoint
    >>> d = write_checkpoint(tempfile.mkdtemp(), hidden_size=64, intermediate_size=128,
    ...                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    >>> sorted(os.listdir(d))
    ['config.json', 'model.safetensors']
    """
    st_dtype = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[dtype]
    params = dict(DEFAULT)
    params.update(shape)
    config = llama_config(**params, dtype=dtype)
    os.makedirs(folder, exist_ok=True)
    shapes = tensor_shapes(config)
    itemsize = st.DTYPES[st_dtype].itemsize
    shards, current, size = [], [], 0
    for name, shp in shapes:
        nbytes = int(np.prod(shp)) * itemsize
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shp))
        size += nbytes
    shards.append(current)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for fname, shard in zip(names, shards):
        specs = [(name, st_dtype, shp) for name, shp in shard]
        writer = st.StreamWriter(os.path.join(folder, fname), specs, {"format": "pt"})
        try:
            for name, shp in shard:
                values = generate_tensor(name, shp, seed)
                if st_dtype == "BF16":
                    values = _bf16_bits(values)
                elif st_dtype == "F16":
                    values = values.astype(np.float16)
                writer.write(name, values)
                weight_map[name] = fname
            writer.close()
        except BaseException:
            writer.abort()
            raise
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if len(shards) > 1:
        total = sum(int(np.prod(s)) * itemsize for _, s in shapes)
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return folder
