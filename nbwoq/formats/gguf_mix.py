"""Which GGML type each tensor of a GGUF file gets: llama-quantize's file types and mixes.

A ``--type`` names a llama.cpp file type (``Q4_K_M``, ``Q8_0``, ...). Its default block
type goes to every quantizable weight; the K-quant mixes then give chosen tensors a
bigger type (the output head, some ``attn_v`` and ``ffn_down`` layers), and a tensor
whose rows do not split into the type's blocks falls back to a smaller block. The rules
are llama.cpp's (``src/llama-quant.cpp``, read for the facts), restricted to the file
types nbwoq writes; ``pure=True`` (llama-quantize ``--pure``) skips the mix rules.
"""

import re

from nbwoq.formats.errors import InputError

#: File type name -> (llama_ftype id, default GGML type). One table for ``--type``.
FILE_TYPES = {
    "F32": (0, "F32"),
    "F16": (1, "F16"),
    "BF16": (32, "BF16"),
    "Q4_0": (2, "Q4_0"),
    "Q4_1": (3, "Q4_1"),
    "Q5_0": (8, "Q5_0"),
    "Q5_1": (9, "Q5_1"),
    "Q8_0": (7, "Q8_0"),
    "Q4_K_S": (14, "Q4_K"),
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K_S": (16, "Q5_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
    "IQ4_NL": (25, "IQ4_NL"),
}
#: Values per block of each GGML type a file type can choose (float types: 1).
BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
         "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_NL": 32}
#: A 256-value type's fallback when a row does not split into 256s (then F16 if 32 fails too).
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_FLOAT = ("F32", "F16", "BF16")

# Weights llama.cpp never quantizes (besides 1-D tensors and norms).
_KEEP = ("ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight",
         "time_mix_", "attn_rel_b.weight", ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger",
         "pos_embd.weight", "token_types.weight")
_LAYER = re.compile(r"^blk\.(\d+)\.")


def file_type(name):
    """The ``(llama_ftype id, default GGML type)`` of ``--type`` ``name`` (case-insensitive)."""
    key = str(name).upper()
    if key not in FILE_TYPES:
        raise InputError(f"--type must be one of {', '.join(FILE_TYPES)}, got {name!r}")
    return FILE_TYPES[key]


def quantizable(name, shape):
    """llama.cpp's rule: 2-D (or more) ``*weight`` tensors, except norms and a few small ones."""
    return (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and not any(k in name for k in _KEEP))


def _category(name):
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    # fused QKV and MLA's kv_b are as sensitive as attn_v: llama.cpp treats them alike
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def plan_types(tensors, type_name, arch, n_layer, n_expert=1, n_gqa=1, pure=False):
    """The GGML type of every tensor: ``{name: type}``, ``None`` for a tensor kept as it is.

    ``tensors``: ``[(gguf name, shape), ...]`` in file order, shape in row-major order
    (rows, cols), so a row holds ``shape[-1]`` values. ``n_gqa``: attention heads per
    key/value head.
    """
    _, default = file_type(type_name)
    ftype = type_name.upper()
    names = [name for name, _ in tensors]
    model = dict(arch=arch, n_layer=n_layer, n_expert=n_expert, n_gqa=n_gqa, tied="output.weight" not in names,
                 n_attn_v=sum(1 for n in names if _category(n) == "attn_v"))
    counters = dict(attn_v=0, ffn_down=0)
    result = {}
    # llama.cpp counts attn_v and ffn_down layers in its own tensor order (llama_model_loader's
    # weight_name_comparer: layer number, then name), not the file's: a file whose tensors run
    # blk.0, blk.1, blk.10, ... gets the same mix as one in layer order.
    for name, shape in sorted(tensors, key=_llama_order):
        if not quantizable(name, shape):
            result[name] = None
            continue
        new = default
        if default not in _FLOAT and not pure:
            new = _mix(name, shape, ftype, default, model, counters)
        if new not in _FLOAT:
            new = _fallback(new, shape[-1])
        result[name] = new
    return {name: result[name] for name, _ in tensors}


def _llama_order(tensor):
    match = _LAYER.match(tensor[0])
    return (int(match.group(1)) if match else -1, tensor[0].encode())


def _mix(name, shape, ftype, new, model, counters):
    cat = _category(name)
    if cat == "output" or (model["tied"] and cat == "token_embd"):
        if model["arch"] == "falcon" or shape[-1] % BLOCK[new]:
            return "Q8_0"
        return new if new == "Q8_0" else "Q6_K"
    if cat == "attn_v":
        i = counters["attn_v"]
        counters["attn_v"] += 1
        if ftype == "IQ4_NL" and model["n_gqa"] >= 4:
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, model["n_attn_v"]):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and i < 4:
            new = "Q5_K"
        return "Q8_0" if model["n_expert"] == 8 else new
    if cat == "attn_k":
        return "Q8_0" if model["n_expert"] == 8 else new
    if cat == "ffn_down":
        return _ffn_down(name, ftype, new, model, counters)
    if cat == "attn_output" and model["arch"] != "falcon" and model["n_expert"] == 8 \
            and ftype in ("Q4_K_S", "Q4_K_M", "IQ4_NL"):
        return "Q5_K"
    return new


def _ffn_down(name, ftype, new, model, counters):
    i, n = counters["ffn_down"], model["n_layer"]
    counters["ffn_down"] += 1
    if model["n_expert"] > 1:  # experts are not consecutive: the layer comes from the name
        match = _LAYER.match(name)
        if match is None or not 0 <= int(match.group(1)) < n:
            raise InputError(f"cannot tell the layer of tensor {name!r} (blk.N. expected, N < {n})")
        i = int(match.group(1))
    falcon = model["arch"] == "falcon"
    if ftype == "Q4_K_M":
        if falcon:
            return "Q6_K" if i < n // 16 else "Q5_K" if _use_more_bits(i, n) else "Q4_K"
        return "Q6_K" if _use_more_bits(i, n) else new
    if ftype == "IQ4_NL" and i < n // 8:
        return "Q5_K"
    if ftype == "Q5_K_M" and _use_more_bits(i, n):
        return "Q6_K"
    if ftype == "Q4_K_S" and not falcon and i < n // 8:
        return "Q5_K"
    return new


def _fallback(new, cols):
    if cols % BLOCK[new] == 0:
        return new
    smaller = FALLBACK.get(new)
    if smaller is not None and cols % BLOCK[smaller] == 0:
        return smaller
    return "F16"
