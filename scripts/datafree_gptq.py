"""GPTQ with a Hessian from model-generated tokens, for ``datafree_methods.py``.

Research prototype (not core): the question is whether second-order error feedback with
input statistics the model produces itself (no calibration text) closes the gap that
diagonal weightings leave. Written from the GPTQ paper's algorithm (Frantar et al.,
2022): columns in order, each column's rounding error spread over the columns not yet
quantized through the upper Cholesky factor of the damped inverse Hessian; group
parameters taken from the updated weights when a group starts.
"""

import numpy as np
import torch


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
