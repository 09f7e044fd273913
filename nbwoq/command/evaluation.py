"""``nbwoq eval``: what a path holds, and the run (load, tokenize, measure, print).

The measures and the model loading are torch's side (``nbwoq_torch.evaluate``), imported
here inside ``run`` only: importing this module imports no torch.
"""

import math
import os

from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.nbwoq_format import FORMAT_NAME
from nbwoq.formats.source import Source


def model_kind(path):
    """``"gguf"``, ``"nbwoq"``, ``"gptq"`` or ``"hf"``: what ``path`` holds, from its name,
    its ``config.json`` and its shard headers (every header is checked; no weight is read).

    Raises
    ------
    InputError
        Not a ``.gguf`` file or a model folder, or a broken one.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and not path.endswith(".gguf"):
        raise InputError(f"{printable(path)} is a file but not a .gguf file: give a .gguf file or a model folder")
    source = Source(path)
    if source.kind == "gguf":
        return "gguf"
    qc = (source.config or {}).get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "gptq":
        return "gptq"
    shard = os.path.join(path, source.shards[0][0])
    if st.read_header(shard)[1].get("format") == FORMAT_NAME:
        return "nbwoq"
    if source.config is None:
        raise InputError(f"{printable(path)} has no config.json: not a Hugging Face model folder")
    return "hf"


def run(model_path, text=None, n_tokens=1024, window=512, against=None, progress=False, log=print):
    """Evaluate ``model_path`` (against ``against``), print the results through ``log``
    and return the report (a dict, as ``--report`` writes it).

    Raises
    ------
    InputError, ValueError
        Bad settings, paths or models: one line saying why.
    """
    import contextlib

    from nbwoq_torch import evaluate

    if n_tokens < 2:
        raise InputError(f"--tokens must be at least 2, got {n_tokens}")
    if window < 2:
        raise InputError(f"--window must be at least 2, got {window}")
    text_path = evaluate.default_text_path() if text is None else text
    body = evaluate.read_text(text_path)
    kinds = (model_kind(model_path), None if against is None else model_kind(against))
    with contextlib.nullcontext() if progress else evaluate.quiet_loading():
        ref = None if against is None else evaluate.load(against, kinds[1])
        mod = evaluate.load(model_path, kinds[0], config=None if ref is None else ref.model.config,
                            need_tokenizer=ref is None or ref.tokenizer is None)
    if mod.tokenizer is not None:
        tokenizer, tok_from = mod.tokenizer, "MODEL's"
    else:  # load(need_tokenizer=True) refused a MODEL without one unless SRC has one
        tokenizer, tok_from = ref.tokenizer, "SRC's (MODEL has none)"
    ids = evaluate.token_ids(tokenizer, body, n_tokens)
    n = int(ids.numel())
    what = f"the default: CPython's {evaluate.DEFAULT_TEXT}, found through importlib" if text is None else "--text"
    log(f"text: {text_path} ({what})")
    short = "" if n == n_tokens else f" (the whole text; {n_tokens} asked)"
    causal = evaluate.is_causal(mod.model.config)
    scored = "(each token after a window's first is predicted)" if causal else "(every token's output compared)"
    log(f"tokens: first {n}{short}, tokenizer {tok_from}, read in {window}-token windows {scored}")
    log(f"model: {mod.path} ({mod.describe()})")
    if ref is not None:
        log(f"against: {ref.path} ({ref.describe()})")
    if not causal:
        return _encoder(evaluate, mod, ref, ids, window, progress, log, text_path, text is None, tokenizer)
    result = evaluate.evaluate(mod.model, ids, window, reference=None if ref is None else ref.model,
                               progress=progress)
    log(f"perplexity: {result['perplexity']:.4f} over {result['predicted']} predicted tokens "
        f"in {result['windows']} windows")
    report = {"model": {"path": mod.path, "kind": mod.kind},
              "text": {"path": text_path, "default": text is None},
              "tokens": n, "window": window, "tokenizer": "model" if tokenizer is mod.tokenizer else "against",
              **result}
    if ref is not None:
        kl = result["kl"]
        log(f"SRC perplexity: {result['reference_perplexity']:.4f}  "
            f"(ln(PPL(MODEL)/PPL(SRC)) = {math.log(result['perplexity'] / result['reference_perplexity']):+.5f})")
        log(f"KL(SRC || MODEL) per token, nats: mean {kl['mean']:.6f} +- {kl['stderr']:.6f}, "
            f"median {kl['p50']:.6f}, 90% {kl['p90']:.6f}, 99% {kl['p99']:.6f}, 99.9% {kl['p99.9']:.6f}, "
            f"max {kl['max']:.6f}")
        log(f"same top-1 token: {100 * result['same_top1']:.2f} % of {result['predicted']}")
        report["against"] = {"path": ref.path, "kind": ref.kind}
    return report


def _encoder(evaluate, mod, ref, ids, window, progress, log, text_path, default_text, tokenizer):
    """An encoder (BERT, a sentence-transformers model): no next-token perplexity; its
    hidden states and mean-pooled embeddings are compared with SRC's."""
    arch = (getattr(mod.model.config, "architectures", None) or [type(mod.model).__name__])[0]
    if ref is None:
        raise InputError(f"{printable(mod.path)} is an encoder ({arch}), which predicts no next token: give "
                         "--against SRC to compare its embeddings with the source's")
    result = evaluate.compare_embeddings(mod.model, ref.model, ids, window, progress)
    e, t = result["embedding_cosine"], result["token_cosine"]
    log(f"encoder ({arch}): no perplexity; outputs compared with SRC's over {result['tokens']} tokens in "
        f"{result['windows']} windows")
    log(f"mean-pooled embedding cosine: mean {e['mean']:.6f}, worst window {e['min']:.6f}")
    log(f"per-token hidden-state cosine: mean {t['mean']:.6f}, 1st percentile {t['p1']:.6f}")
    return {"model": {"path": mod.path, "kind": mod.kind}, "against": {"path": ref.path, "kind": ref.kind},
            "text": {"path": text_path, "default": default_text}, "tokens": result["tokens"], "window": window,
            "tokenizer": "model" if tokenizer is mod.tokenizer else "against", "encoder": True, **result}
