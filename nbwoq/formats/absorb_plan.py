"""The absorption plan of a checkpoint from its tensor names, without torch.

Which feeder can take a column scale for which linear layers follows from the
architecture family (``config.json``'s ``model_type`` or a GGUF file's
``general.architecture``) and the tensor names alone. Per decoder block:

=========================================  ================================  =============
feeder (Hugging Face / GGUF name)          consumers                         absorbs by
=========================================  ================================  =============
``input_layernorm`` / ``attn_norm``        ``q/k/v_proj`` / ``attn_q/k/v``   norm weight
``post_attention_layernorm`` (Gemma 2/3:   ``gate/up_proj`` /                norm weight
``pre_feedforward_layernorm``) /           ``ffn_gate/up``
``ffn_norm``
``up_proj`` / ``ffn_up``                   ``down_proj`` / ``ffn_down``      rows
``v_proj`` / ``attn_v``                    ``o_proj`` / ``attn_output``      rows
=========================================  ================================  =============

Hugging Face Gemma 2/3 norms multiply by ``1 + weight`` (``"norm_plus_one"``); GGUF
stores every norm as the plain multiplier (llama.cpp's converter adds the 1), so a GGUF
plan's norms are ``"norm"`` in every family. Gemma 2/3's ``post_attention_layernorm``
(GGUF ``post_attention_norm``) and ``post_feedforward_layernorm`` normalize a block's
output before the residual add: they feed no linear layer.

``v_proj -> o_proj`` needs the head counts: without grouped-query attention every
``o_proj`` column reads one ``v_proj`` row and any column scale folds; with it
(``kv_heads < heads``) one ``v_proj`` row feeds the same channel of ``heads /
kv_heads`` query heads, so ``o_proj``'s column scale must be the same across those heads
(``AbsorbGroup.repeat``, ``block``). Without head counts the pair is left out and both
tensors keep only what their other groups give them.

Qwen3 and Gemma 3 normalize each head of q and k after the projection (``q_norm``,
``k_norm``): that does not touch the input-side folds above, but it does rule out a
fold into ``q_proj``/``k_proj`` rows (a per-channel scale does not commute with the
head's RMS), which no rule here makes.

A group is made only when its feeder and every consumer are present: a missing
consumer would be left reading a scaled input.
"""

import re

from nbwoq import _validate
from nbwoq.absorb import AbsorbGroup, make_plan

#: Family -> (pre-MLP norm's Hugging Face name, Hugging Face norm kind). Mistral files
#: converted by llama.cpp say "llama"; ``gemma3_text`` is Gemma 3's text-only config.
FAMILIES = {
    "llama": ("post_attention_layernorm", "norm"),
    "mistral": ("post_attention_layernorm", "norm"),
    "qwen2": ("post_attention_layernorm", "norm"),
    "qwen3": ("post_attention_layernorm", "norm"),
    "gemma2": ("pre_feedforward_layernorm", "norm_plus_one"),
    "gemma3": ("pre_feedforward_layernorm", "norm_plus_one"),
    "gemma3_text": ("pre_feedforward_layernorm", "norm_plus_one"),
}

_HF_BLOCK = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.\d+\.)(?P<rest>[^.].*)$")
_GGUF_BLOCK = re.compile(r"^(?P<prefix>blk\.\d+\.)(?P<rest>.+)$")

# Role -> name inside a block; "norm2" is filled in per family.
_HF_ROLES = {
    "norm1": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight", "v_bias": "self_attn.v_proj.bias",
    "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
    "up_bias": "mlp.up_proj.bias",
}
_GGUF_ROLES = {
    "norm1": "attn_norm.weight", "norm2": "ffn_norm.weight",
    "q": "attn_q.weight", "k": "attn_k.weight", "v": "attn_v.weight", "o": "attn_output.weight",
    "v_bias": "attn_v.bias",
    "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight", "up_bias": "ffn_up.bias",
}
_LINEAR_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def _naming(names, naming):
    if naming is None:
        return "gguf" if any(_GGUF_BLOCK.match(n) for n in names) else "hf"
    if naming not in ("hf", "gguf"):
        raise ValueError(f"naming must be 'hf', 'gguf' or None, got {naming!r}")
    return naming


def _heads(heads, kv_heads, head_dim):
    """``(repeat, block)`` of the ``v -> o`` fold, or None when it cannot be planned."""
    if heads is None:
        if kv_heads is not None or head_dim is not None:
            raise ValueError("kv_heads and head_dim need heads")
        return None
    heads = _validate.integer(heads, "heads")
    kv_heads = heads if kv_heads is None else _validate.integer(kv_heads, "kv_heads")
    if heads < 1 or kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"heads must be a positive multiple of kv_heads, got heads {heads}, kv_heads {kv_heads}")
    repeat = heads // kv_heads
    if repeat == 1:
        return 1, 0
    if head_dim is None:
        raise ValueError("with grouped-query attention (kv_heads < heads) head_dim is needed to tie o_proj's "
                         "columns to v_proj's rows")
    head_dim = _validate.integer(head_dim, "head_dim")
    if head_dim < 1:
        raise ValueError(f"head_dim must be a positive integer, got {head_dim}")
    return repeat, head_dim


def absorb_plan(names, family, *, heads=None, kv_heads=None, head_dim=None, naming=None):
    """The absorption plan of a checkpoint from its tensor names.

    Parameters
    ----------
    names : iterable of str
        The checkpoint's tensor names (a Hugging Face state dict's or a GGUF file's).
    family : str
        ``config.json``'s ``model_type`` or GGUF's ``general.architecture``: one of
        ``FAMILIES`` (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3).
    heads, kv_heads, head_dim : int, optional
        Attention head counts and head size, for the ``v_proj -> o_proj`` group. Left
        out: no such group. ``kv_heads`` defaults to ``heads``; ``head_dim`` is needed
        only when ``kv_heads < heads``.
    naming : {None, "hf", "gguf"}
        ``None``: GGUF when a name starts with ``blk.<n>.``, else Hugging Face.

    Returns
    -------
    AbsorbPlan
        Its groups, and as ``row_only`` the blocks' linear weights (q, k, v, o, gate,
        up, down) that no group scales.

    Raises
    ------
    TypeError, ValueError
        An unknown family, a name that is not a string, or bad head counts.

    Examples
    --------
    >>> from nbwoq import absorb_plan
    >>> names = [f"model.layers.0.{n}.weight" for n in ("input_layernorm", "self_attn.q_proj",
    ...          "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")]
    >>> plan = absorb_plan(names, "llama")
    >>> group = plan.groups[0]
    >>> group.feeder, group.absorb, [name.split(".")[-2] for name in group.consumers]
    ('model.layers.0.input_layernorm.weight', 'norm', ['k_proj', 'q_proj', 'v_proj'])
    >>> plan.row_only
    ('model.layers.0.self_attn.o_proj.weight',)
    >>> absorb_plan(names, "llama", heads=4, kv_heads=2, head_dim=8).groups[1][:2]
    ('model.layers.0.self_attn.v_proj.weight', 'rows')
    """
    if not isinstance(family, str):
        raise TypeError(f"family must be a string, got {type(family).__name__}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    names = list(names)
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise TypeError(f"names must be strings, got {bad!r}")
    heads_fold = _heads(heads, kv_heads, head_dim)
    naming = _naming(names, naming)
    if naming == "gguf":
        pattern, roles, norm_kind = _GGUF_BLOCK, _GGUF_ROLES, "norm"
    else:
        norm2, norm_kind = FAMILIES[family]
        pattern, roles = _HF_BLOCK, dict(_HF_ROLES, norm2=f"{norm2}.weight")
    by_role = {role: name for role, name in roles.items()}
    blocks = {}
    for name in names:
        m = pattern.match(name)
        if m:
            blocks.setdefault(m["prefix"], set()).add(m["rest"])
    groups, linears = [], []
    for prefix, present in blocks.items():
        def has(role):
            return by_role[role] in present

        def full(role):
            return prefix + by_role[role]

        linears += [full(r) for r in _LINEAR_ROLES if has(r)]
        rules = [("norm1", norm_kind, ("q", "k", "v"), None, (1, 0)),
                 ("norm2", norm_kind, ("gate", "up"), None, (1, 0)),
                 ("up", "rows", ("down",), "up_bias", (1, 0))]
        if heads_fold is not None:
            rules.append(("v", "rows", ("o",), "v_bias", heads_fold))
        for feeder, kind, consumers, bias, (repeat, block) in rules:
            if has(feeder) and all(has(c) for c in consumers):
                groups.append(AbsorbGroup(full(feeder), kind, tuple(full(c) for c in consumers),
                                          full(bias) if bias and has(bias) else None, repeat, block))
    return make_plan(groups, linears)
