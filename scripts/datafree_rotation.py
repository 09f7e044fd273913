"""Residual-stream rotation before round-to-nearest on SmolLM2-135M (research, issue 15).

QuaRot/SpinQuant's "computational invariance": with every RMSNorm weight folded into the
linears it feeds (q/k/v, gate/up, the untied lm_head), the residual stream can be rotated
by any orthogonal ``Q`` (embedding ``E Q``; readers ``W Q``; writers ``Q^T W``) and the
model computes the same function, in a standard layout every engine loads. HIGGS and
QuIP# report that such rotations make weights easier to quantize. This measures it for
weight-only int4: perplexity and KL against the source (the harness of
``datafree_methods.py``) after RTN at ``q4_0`` and ``g128``, for

``none``        the source as it is (RTN's row: the gaps are measured from it)
``fold``        the RMSNorm weights folded into the linears, no rotation
``had``         fold, then a block-diagonal Hadamard (the largest power-of-two block
                dividing the width) with random signs
``hadperm``     the same with the columns permuted at random
``randortho``   fold, then a random orthogonal matrix (QR of a Gaussian)
``...+vo``      also a Hadamard inside each head between v_proj and o_proj

Each transform's float model is checked first (KL against the source, ~1e-9).

    PYTHONPATH=$PWD python scripts/datafree_rotation.py [--kinds none fold had ...]
        [--settings q4_0 g128] [--texts topics argparse email]

Measured (2026-12-06; docs/guide/accuracy.rst, "Fourth round"): every rotation is worse
than RTN on the unrotated model, because folding the norm weights alone is.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datafree_methods as dm  # noqa: E402
from smollm2_perplexity import smollm2_gguf  # noqa: E402

KINDS = ("none", "fold", "had", "hadperm", "randortho", "randortho+vo")


def hadamard(n):
    """Sylvester's normalized Hadamard matrix of order ``n`` (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(h.shape[0])


def orthogonal(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "randortho":
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return q * np.sign(np.diag(r))
    block = 1
    while n % (block * 2) == 0:
        block *= 2
    m = rng.choice([-1.0, 1.0], n)[:, None] * np.kron(np.eye(n // block), hadamard(block))
    return m[:, rng.permutation(n)] if kind == "hadperm" else m


def transformed(source, cfg, kind, seed=0):
    """The state dict (float32) of the model transformed by ``kind`` (float64 on the way)."""
    import torch

    sd = {k: v.double().clone() for k, v in source.items()}
    if kind != "none":
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            for norm, names in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
                g = sd[p + norm + ".weight"]
                for n in names:
                    sd[p + n + ".weight"] *= g[None, :]
                sd[p + norm + ".weight"] = torch.ones_like(g)
        g = sd["model.norm.weight"]
        sd["lm_head.weight"] *= g[None, :]
        sd["model.norm.weight"] = torch.ones_like(g)
    head, *extra = kind.split("+")
    if head not in ("none", "fold"):
        q = torch.from_numpy(orthogonal(head, cfg.hidden_size, seed))
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            sd[k] = sd[k] @ q
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                sd[p + n + ".weight"] = sd[p + n + ".weight"] @ q
            for n in ("self_attn.o_proj", "mlp.down_proj"):
                sd[p + n + ".weight"] = q.T @ sd[p + n + ".weight"]
    if "vo" in extra:
        d, nq, nkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        hd = d // nq
        r = torch.from_numpy(orthogonal("had", hd, seed + 1))
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}.self_attn."
            v = sd[p + "v_proj.weight"].reshape(nkv, hd, d)
            sd[p + "v_proj.weight"] = (r.T @ v).reshape(nkv * hd, d)
            o = sd[p + "o_proj.weight"].reshape(d, nq, hd)
            sd[p + "o_proj.weight"] = (o @ r).reshape(d, nq * hd)
    return {k: v.float() for k, v in sd.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--settings", nargs="*", default=list(dm.SETTINGS), choices=list(dm.SETTINGS))
    parser.add_argument("--texts", nargs="*", default=list(dm.TEXTS), choices=list(dm.TEXTS))
    args = parser.parse_args()
    if args.kinds[0] != "none":
        args.kinds.insert(0, "none")  # RTN's row: the gaps are measured from it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers

    torch.set_num_threads(2)
    src = smollm2_gguf()
    folder, file = os.path.dirname(src), os.path.basename(src)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval()
    # SmolLM2 ties lm_head to the embedding; the final norm's fold needs its own copy
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    source = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = [k for k in source if k.split(".")[-2] in dm.LINEARS and k.endswith(".weight")]
    texts = {t: dm.text_ids(tok, t) for t in args.texts}
    refs = {t: [] for t in texts}
    base = {t: dm.ppl_kl(model, ids, refs[t])[0] for t, ids in texts.items()}
    print(f"{'source':<24}" + "".join(f" {t}={v:.3f}" for t, v in base.items()), flush=True)
    rtn = {}
    for kind in args.kinds:
        sd = transformed(source, model.config, kind)
        model.load_state_dict(sd)
        t, ids = next(iter(texts.items()))
        print(f"{kind:<24} float: KL against the source on {t} {dm.ppl_kl(model, ids, refs[t])[1]:.1e}", flush=True)
        for setting in args.settings:
            t0 = time.perf_counter()
            upd = {k: torch.from_numpy(dm.fake_quant(sd[k].numpy(), dm.SETTINGS[setting], "rtn")) for k in names}
            model.load_state_dict(upd, strict=False)
            line = f"{setting + ' ' + kind:<24}"
            for t, ids in texts.items():
                ppl, kl = dm.ppl_kl(model, ids, refs[t])
                rtn.setdefault((setting, t), ppl)
                gap = rtn[setting, t]
                line += f" {t}={ppl:.3f} ({100 * (gap - ppl) / (gap - base[t]):.0f}%) kl={kl:.4f}"
            print(line + f"  [{time.perf_counter() - t0:.0f}s]", flush=True)
            model.load_state_dict(sd)


if __name__ == "__main__":
    main()
