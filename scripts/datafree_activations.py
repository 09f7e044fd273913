"""Input statistics and GPTQ for ``datafree_methods.py`` (research prototype, not core).

Column importances of each linear from the weights alone (``input_moments``) or from the
source model's own activations on token ids that are no calibration text
(``synthetic_ids``: random ids, or text the model samples itself); and GPTQ with a
Hessian from the same activations (its off-diagonal part optionally shrunk toward 0),
written from the GPTQ paper's algorithm (Frantar et al., 2022): columns in order, each
column's rounding error spread over the columns not
yet quantized through the upper Cholesky factor of the damped inverse Hessian; group
parameters taken from the updated weights when a group starts; ``gptq_sequential`` runs it
decoder layer by decoder layer on inputs that went through the layers already quantized.
Statistics may leave out the first positions of each sequence (``-skipK``: the attention
sink's massive activations) or scale each token to unit mean square (``-tn``). The
question is whether activation statistics the model produces itself close the gap that
weight-only weightings leave.
"""

import time

import numpy as np
import torch


def parse_source(name):
    """``SRC[-skipK][-tn]`` -> (SRC, K, tn): statistics from positions >= K of each
    sequence only (the first positions carry the attention sink's massive activations),
    each token's input scaled to unit mean square first with ``-tn``."""
    skip, tnorm = 0, False
    parts = name.split("-")
    for p in parts[1:]:
        if p.startswith("skip"):
            skip = int(p[4:])
        elif p == "tn":
            tnorm = True
        else:
            raise ValueError(name)
    return parts[0], skip, tnorm


def synthetic_ids(model, tok, name, text_ids, n=256):
    """Token ids to measure activations on: (batch, length). ``randseqN`` (one sequence of
    N random ids) or ``randseqBxL`` (B sequences of L); ``genN`` / ``genBxL`` (sampled by
    the model from BOS, BOS included)."""
    if name == "rand":
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, model.config.vocab_size, (n, 1), generator=g)
    if name.startswith("randseq"):
        b, n = _shape(name[7:], n)
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, model.config.vocab_size, (b, n), generator=g)
    if name.startswith("gen"):
        b, n = _shape(name[3:], n)
        torch.manual_seed(0)
        bos = torch.full((b, 1), tok.bos_token_id if tok.bos_token_id is not None else 0)
        with torch.inference_mode():
            out = model.generate(bos, attention_mask=torch.ones_like(bos), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
        return out
    ids = text_ids(tok, name, 2048)[1024:]  # not the evaluated tokens
    return ids[None, :512]


def _shape(spec, n):
    if "x" in spec:
        b, n = spec.split("x")
        return int(b), int(n)
    return 1, int(spec or n)


def _rows(x, skip, tnorm):
    """The (tokens, features) float64 rows a statistic is taken over."""
    x = x.detach().double()
    if x.dim() == 3:
        x = x[:, skip:]
    x = x.reshape(-1, x.shape[-1])
    if tnorm:
        x = x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-30)
    return x


def act_moments(model, names, ids, skip=0, tnorm=False):
    """Mean squared input per column of each linear in ``names`` over ``ids``."""
    sums, count = {}, {}
    hooks = []
    mods = dict(model.named_modules())
    for k in names:
        def hook(mod, args, k=k):
            x = _rows(args[0], skip, tnorm)
            sums[k] = sums.get(k, 0) + (x * x).sum(0).numpy()
            count[k] = count.get(k, 0) + x.shape[0]
        hooks.append(mods[k[:-len(".weight")]].register_forward_pre_hook(hook))
    with torch.inference_mode():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {k: v / count[k] + 1e-12 for k, v in sums.items()}


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


def input_hessians(model, names, ids, skip=0, tnorm=False):
    """X^T X / n per linear in ``names`` (float64), inputs of the source model on ``ids``."""
    mods = dict(model.named_modules())
    targets = {k: mods[k[:-len(".weight")]] for k in names}
    with torch.inference_mode():
        return _hessians(targets, lambda: model(input_ids=ids, use_cache=False), skip, tnorm)


def _hessians(targets, run, skip, tnorm):
    """X^T X / n of each module in ``targets`` (name -> module) while ``run()`` runs."""
    sums, hooks, count = {}, [], {}
    for k, mod in targets.items():
        def hook(mod, args, k=k):
            x = _rows(args[0], skip, tnorm)
            sums[k] = sums.get(k, 0) + x.T @ x
            count[k] = count.get(k, 0) + x.shape[0]
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return {k: v / count[k] for k, v in sums.items()}


class _Stop(Exception):
    pass


def _first_layer_inputs(model, ids):
    """The first decoder layer's hidden states and keyword arguments on ``ids``."""
    got = {}

    def hook(mod, args, kwargs):
        kwargs = dict(kwargs)
        got["h"] = args[0] if args else kwargs.pop("hidden_states")
        got["kw"] = kwargs
        raise _Stop

    h = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["h"], got["kw"]


STAGES = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


def gptq_sequential(model, ids, st, damp, skip=0, tnorm=False):
    """GPTQ decoder layer by decoder layer, in place: each linear's Hessian from inputs
    that went through the already-quantized layers before it and, within its own layer,
    the already-quantized stages (q/k/v, then o, then gate/up, then down), as the GPTQ
    paper's sequential variant does. Returns the new weights by state-dict name."""
    out = {}
    with torch.inference_mode():
        hs, kw = _first_layer_inputs(model, ids)
        for i, layer in enumerate(model.model.layers):
            mods = dict(layer.named_modules())
            for stage in STAGES:
                targets = {n: m for n, m in mods.items() if n.split(".")[-1] in stage}
                hess = _hessians(targets, lambda: layer(hs, **kw), skip, tnorm)
                for n, m in targets.items():
                    q = torch.from_numpy(gptq(m.weight.numpy(), hess[n], st, damp))
                    m.weight.copy_(q)
                    out[f"model.layers.{i}.{n}.weight"] = q
            hs = layer(hs, **kw)
            hs = hs[0] if isinstance(hs, tuple) else hs
    return out


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


def _searched_params(seg, st, wdiag, ratios=tuple(1.0 - 0.025 * i for i in range(11))):
    """As ``_params``, with the group's range shrunk by the ratio (1 .. 0.75) whose
    codes give each row the least error weighted by ``wdiag`` (the Hessian's diagonal
    over the group's columns: the input's mean square), GPTQ's ``mse`` grid weighted."""
    qmin, qmax = (-8, 7) if st["scheme"] == "sym" else (0, 15)
    best = None
    for r in ratios:
        s, z = _params(seg * r, st)
        q = (torch.clamp(torch.round(seg / s[:, None]) + z[:, None], qmin, qmax) - z[:, None]) * s[:, None]
        err = ((seg - q) ** 2 * wdiag[None, :]).sum(1)
        if best is None:
            best = [err, s, z]
        else:
            better = err < best[0]
            best = [torch.where(better, err, best[0]), torch.where(better, s, best[1]), torch.where(better, z, best[2])]
    return best[1], best[2]


def gptq(w, h, st, damp=0.01, block=128, shrink=1.0, search=False):
    """Fake-quantized ``w`` (rows, cols) float32 for setting ``st`` with Hessian ``h``,
    its off-diagonal part scaled by ``shrink`` first (1: GPTQ; 0: a diagonal Hessian, which
    spreads no error, i.e. round-to-nearest): shrinkage toward the diagonal, the usual
    remedy for a covariance estimated from few or unrepresentative samples."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-column ops: one thread is 3x faster on a busy machine
    if shrink != 1.0:
        d = torch.diag(torch.diag(h))
        h = d + shrink * (h - d)
    try:
        return _gptq(w, h, st, damp, block, search)
    finally:
        torch.set_num_threads(threads)


def _gptq(w, h, st, damp, block, search=False):
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
                seg = Wb[:, j:j + g] if b1 - b0 >= j + g else torch.cat([Wb[:, j:], W[:, b1:]], 1)[:, :g]
                s, z = (_searched_params(seg, st, torch.diag(H)[i:i + seg.shape[1]]) if search
                        else _params(seg, st))
            col = Wb[:, j]
            q = (torch.clamp(torch.round(col / s) + z, qmin, qmax) - z) * s
            Q[:, i] = q
            err = (col - q) / U[i, i]
            Wb[:, j:] -= err[:, None] * U[i, i:b1][None, :]
            Eb[:, j] = err
        W[:, b1:] -= Eb @ U[b0:b1, b1:]
    return Q.float().numpy()


def moments(model, source, names, tok, text_ids, cache, src, hessians=False):
    """Input mean squares per column (or X^T X / n) of each linear by name over ``src``,
    measured on the source model once (``cache``), and the seconds it took (0 if cached)."""
    key = ("H" if hessians else "m", src)
    if key in cache:
        return cache[key], 0.0
    t0 = time.perf_counter()
    base, skip, tnorm = parse_source(src)
    ids = synthetic_ids(model, tok, base, text_ids)
    model.load_state_dict(source)
    cache[key] = (input_hessians if hessians else act_moments)(model, names, ids, skip, tnorm)
    return cache[key], time.perf_counter() - t0


def update(method, model, source, names, st, tok, text_ids, cache, fake_quant, weighting, iters):
    """New weights (name -> tensor) for ``act-SRC[@power]:inner``, ``gptq-SRC[@damp[@shrink]]`` or
    ``gptqseq-SRC[@damp]`` (``SRC`` as ``parse_source`` reads it: ``randseqN``,
    ``randseqBxL``, ``genN``, ``genBxL`` or a text name, then ``-skipK``, ``-tn``), and
    the seconds its statistics took (0 when cached from an earlier setting)."""
    if method.startswith("gptqseq-"):
        src, damp = (method[8:].split("@") + ["0.01"])[:2]
        base, skip, tnorm = parse_source(src)
        if ("ids", base) not in cache:
            cache["ids", base] = synthetic_ids(model, tok, base, text_ids)
            model.load_state_dict(source)
        return gptq_sequential(model, cache["ids", base], st, float(damp), skip, tnorm), 0.0
    gp = method.startswith("gptq-")
    if gp:  # gptq-SRC[@damp[@shrink[@mse]]]: "mse" searches each group's range (_searched_params)
        src, damp, shrink, mse = (method[5:].split("@") + ["0.01", "1", ""])[:4]
    else:
        head, inner = method.split(":", 1)
        src, power = (head[4:].split("@") + ["1"])[:2]
    stats, seconds = moments(model, source, names, tok, text_ids, cache, src, gp)
    if gp:
        return {k: torch.from_numpy(gptq(source[k].numpy(), stats[k], st, float(damp), shrink=float(shrink),
                                               search=mse == "mse"))
                for k in names}, seconds
    upd = {}
    for k in names:
        col = stats[k] ** (float(power) / 2)
        col = (col / col.mean()).astype(np.float32)
        upd[k] = torch.from_numpy(fake_quant(source[k].numpy(), st, inner, weighting, iters, col))
    return upd, seconds
