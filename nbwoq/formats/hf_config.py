"""Hugging Face ``config.json`` values, read as untrusted input.

A converter needs a handful of numbers from the config (layer and head counts, sizes,
rope settings). Each is checked for type and a sane range here, once, so a missing key,
a string where a number belongs or an absurd value is one ``InputError`` naming the key,
never a ``KeyError``, a division by zero or a huge allocation later.
"""

import math
import numbers

from nbwoq.formats.errors import InputError

_ABSENT = object()


def config_int(cfg, key, low, high, default=_ABSENT):
    value = cfg.get(key, default)
    if value is _ABSENT:
        raise InputError(f"config.json lacks {key!r}")
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"config.json: {key} must be an integer from {low} to {high}, got {value!r}")
    return value


def config_float(cfg, key, default):
    value = cfg.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise InputError(f"config.json: {key} must be a positive number, got {value!r}")
    return float(value)


def config_optional_float(cfg, key):
    """A positive number, or None when the key is absent or null (a feature turned off)."""
    if cfg.get(key) is None:
        return None
    return config_float(cfg, key, None)


def config_optional_int(cfg, key, low, high):
    """An integer from ``low`` to ``high``, or None when the key is absent or null."""
    if cfg.get(key) is None:
        return None
    return config_int(cfg, key, low, high)


def rope_parameters(cfg, layer_type=None):
    """The rope settings of ``config.json``: older files keep ``rope_theta`` and
    ``rope_scaling`` at the top level, transformers >= 5 writes one ``rope_parameters``
    dict (or one per layer type, e.g. Gemma 3's ``full_attention`` and
    ``sliding_attention``). Returns a dict (possibly empty), checked to be one."""
    params = cfg.get("rope_parameters")
    if params is None:
        scaling = cfg.get("rope_scaling") or {}
        if not isinstance(scaling, dict):
            raise InputError(f"config.json: rope_scaling must be an object, got {scaling!r}")
        params = dict(scaling)
        if "rope_theta" in cfg:
            params["rope_theta"] = cfg["rope_theta"]
        return params
    if not isinstance(params, dict):
        raise InputError(f"config.json: rope_parameters must be an object, got {params!r}")
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        return params[layer_type]
    if layer_type is None and isinstance(params.get("full_attention"), dict):
        return params["full_attention"]
    return params


def rope_theta(cfg, default, layer_type=None):
    """The checked rope base frequency (``rope_theta``, wherever the config keeps it)."""
    return config_float(rope_parameters(cfg, layer_type), "rope_theta", default)


def llama_shape(cfg):
    """The checked numbers of a Llama-family config: ``dict`` with ``layers``, ``heads``,
    ``kv_heads``, ``hidden``, ``ffn``, ``vocab``, ``head_dim``, ``context``,
    ``rope_theta``, ``rms_eps``."""
    heads = config_int(cfg, "num_attention_heads", 1, 1 << 12)
    hidden = config_int(cfg, "hidden_size", 1, 1 << 20)
    kv_heads = config_int(cfg, "num_key_value_heads", 1, heads, default=heads)
    if heads % kv_heads:
        raise InputError(f"config.json: num_attention_heads ({heads}) is not a multiple of "
                         f"num_key_value_heads ({kv_heads})")
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise InputError(f"config.json: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})")
        head_dim = hidden // heads
    else:
        head_dim = config_int(cfg, "head_dim", 2, 1 << 14)
    if head_dim % 2:
        raise InputError(f"config.json: head_dim must be even for rotary embeddings, got {head_dim}")
    return dict(
        layers=config_int(cfg, "num_hidden_layers", 1, 1 << 12),
        heads=heads, kv_heads=kv_heads, hidden=hidden, head_dim=head_dim,
        ffn=config_int(cfg, "intermediate_size", 1, 1 << 22),
        vocab=config_int(cfg, "vocab_size", 1, 1 << 24),
        context=config_int(cfg, "max_position_embeddings", 1, 1 << 26, default=2048),
        rope_theta=rope_theta(cfg, 10000.0),
        rms_eps=config_float(cfg, "rms_norm_eps", 1e-5),
    )
