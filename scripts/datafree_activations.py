"""Input statistics and GPTQ for ``datafree_methods.py`` (research prototype, not core).

Column importances of each linear from the weights alone (``input_moments``) or from the
source model's own activations on token ids that are no calibration text
(``synthetic_ids``: random ids, or text the model samples itself); and GPTQ with a
Hessian from the same activations, written from the GPTQ paper's algorithm (Frantar et
al., 2022): columns in order, each column's rounding error spread over the columns not
yet quantized through the upper Cholesky factor of the damped inverse Hessian; group
parameters taken from the updated weights when a group starts. The question is whether
activation statistics the model produces itself close the gap that weight-only
weightings leave.
"""

import numpy as np
import torch


def synthetic_ids(model, tok, name, text_ids, n=256):
    """Token ids to measure activations on: (batch, length)."""
    if name == "rand":
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, model.config.vocab_size, (n, 1), generator=g)
    if name.startswith("randseq"):  # "randseqN": one sequence of N random token ids
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, model.config.vocab_size, (1, int(name[7:] or n)), generator=g)
    if name.startswith("gen"):  # "genN": N tokens sampled from BOS (default 256)
        n = int(name[3:] or n)
        torch.manual_seed(0)
        bos = torch.tensor([[tok.bos_token_id if tok.bos_token_id is not None else 0]])
        with torch.inference_mode():
            out = model.generate(bos, max_new_tokens=n, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                 pad_token_id=0)
        return out
    ids = text_ids(tok, name, 2048)[1024:]  # not the evaluated tokens
    return ids[None, :512]


def act_moments(model, names, ids):
    """Mean squared input per column of each linear in ``names`` over ``ids``."""
    sums = {}
    hooks = []
    mods = dict(model.named_modules())
    for k in names:
        def hook(mod, args, k=k):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[k] = sums.get(k, 0) + (x * x).sum(0).numpy()
        hooks.append(mods[k[:-len(".weight")]].register_forward_pre_hook(hook))
    with torch.inference_mode():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {k: v / ids.numel() + 1e-12 for k, v in sums.items()}


def input_moments(state, cfg, all_layers=False):
    """Data-free guess of each linear's input second moment per column, by name: the
    RMSNorm output is gamma_j * n_j with n roughly unit, so gamma_j ** 2 for q/k/v and
    gate/up; with ``all_layers`` also o_proj (input: averages of v, so the squared norm
    of v_proj's row j times gamma) and down_proj (silu(gate_j . x) * (up_j . x): the
    product of both rows' squared norms times gamma)."""
    out = {}
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // n_head
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        get = lambda k: state[p + k].numpy().astype(np.float64)  # noqa: E731
        g1 = get("input_layernorm.weight")
        g2 = get("post_attention_layernorm.weight")
        for n in "qkv":
            out[p + f"self_attn.{n}_proj.weight"] = g1 ** 2
        for n in ("gate", "up"):
            out[p + f"mlp.{n}_proj.weight"] = g2 ** 2
        if all_layers:
            v = ((get("self_attn.v_proj.weight") * g1) ** 2).sum(1).reshape(n_kv, 1, hd)
            out[p + "self_attn.o_proj.weight"] = np.broadcast_to(v, (n_kv, n_head // n_kv, hd)).reshape(-1)
            gate = ((get("mlp.gate_proj.weight") * g2) ** 2).sum(1)
            up = ((get("mlp.up_proj.weight") * g2) ** 2).sum(1)
            out[p + "mlp.down_proj.weight"] = gate * up
    return out


def input_hessians(model, names, ids):
    """X^T X / n per linear in ``names`` (float64), inputs of the source model on ``ids``."""
    sums, hooks = {}, []
    mods = dict(model.named_modules())
    for k in names:
        def hook(mod, args, k=k):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[k] = sums.get(k, 0) + x.T @ x
        hooks.append(mods[k[:-len(".weight")]].register_forward_pre_hook(hook))
    with torch.inference_mode():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {k: v / ids.numel() for k, v in sums.items()}


def _params(seg, st):
    """Round-to-nearest's scale and zero per row of ``seg`` (rows, g), as the formats do."""
    lo = seg.min(1).values
    hi = seg.max(1).values
    if st["scheme"] == "sym":
        ext = torch.where(hi.abs() > lo.abs(), hi, lo)
        s = ext / -8.0
        s = torch.where(s == 0, torch.ones_like(s), s)
        if st["scale16"]:
            s = s.half().double()
        return s, torch.zeros_like(s)
    lo = lo.clamp(max=0)
    hi = hi.clamp(min=0)
    both = (lo == 0) & (hi == 0)
    lo = torch.where(both, -torch.ones_like(lo), lo)
    hi = torch.where(both, torch.ones_like(hi), hi)
    s = ((hi - lo) / 15.0).float().double()
    return s, torch.round(-lo / s)


def gptq(w, h, st, damp=0.01, block=128):
    """Fake-quantized ``w`` (rows, cols) float32 for setting ``st`` with Hessian ``h``."""
    g = st["group_size"]
    qmin, qmax = (-8, 7) if st["scheme"] == "sym" else (0, 15)
    W = torch.from_numpy(np.array(w, dtype=np.float64))
    H = h.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    s = z = None
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        Wb = W[:, b0:b1].clone()
        Eb = torch.zeros_like(Wb)
        for j in range(b1 - b0):
            i = b0 + j
            if i % g == 0:
                # the group's parameters from its weights as updated so far
                seg = torch.cat([Wb[:, j:], W[:, b1:]], 1)[:, :min(g, cols - i)]
                s, z = _params(seg, st)
            col = Wb[:, j]
            q = (torch.clamp(torch.round(col / s) + z, qmin, qmax) - z) * s
            Q[:, i] = q
            err = (col - q) / U[i, i]
            Wb[:, j:] -= err[:, None] * U[i, i:b1][None, :]
            Eb[:, j] = err
        W[:, b1:] -= Eb @ U[b0:b1, b1:]
    return Q.float().numpy()
