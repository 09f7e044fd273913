"""Perplexity of a checkpoint, and its next-token distance to another one (``nbwoq eval``).

A model is read from a GGUF file (transformers' GGUF loader, which dequantizes), a
Hugging Face folder, an nbwoq-format folder (``nbwoq.load`` + ``nbwoq.dequantize`` into
the architecture of its ``config.json``, weights in float32) or a GPTQ folder (through
gptqmodel, when it is installed). Everything runs in float32 on the CPU.

The text is cut into its first ``n_tokens`` tokens and read in non-overlapping windows
of ``window`` tokens; in each window every token after the first is predicted from the
ones before it in that window. Against a reference (``SRC``), each of those predictions
also gives ``KL(P_src || P_model)`` and whether both put the same token first, as
llama.cpp's ``llama-perplexity --kl-divergence`` does (there the reference's logits
come from a saved file; here both models run side by side).
"""

import contextlib
import copy
import importlib.util
import io
import json
import math
import os
import sys
import sysconfig

import numpy as np
import torch


class EvalError(ValueError):
    """A model, a text or a setting cannot be evaluated; the message (one line) says why."""


#: CPython's own text, present wherever Python is: the default evaluation text.
DEFAULT_TEXT = "pydoc_data/topics.py"
#: What ``load`` reads, and how.
KINDS = {"gguf": "GGUF file, dequantized by transformers' GGUF loader",
         "hf": "Hugging Face folder",
         "nbwoq": "nbwoq-format folder, dequantized by nbwoq.dequantize",
         "gptq": "GPTQ folder, through gptqmodel"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_QUANTILES = (0.5, 0.9, 0.99, 0.999)


# --- the text -----------------------------------------------------------------------------

def default_text_path():
    """Path of CPython's ``pydoc_data/topics.py`` (found through ``importlib``, else the
    standard library folder of ``sysconfig``).

    Raises
    ------
    EvalError
        When this Python ships without it (some distributions split it off).
    """
    spec = importlib.util.find_spec("pydoc_data")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    folders.append(os.path.join(sysconfig.get_path("stdlib"), "pydoc_data"))
    for folder in folders:
        path = os.path.join(folder, "topics.py")
        if os.path.isfile(path):
            return path
    raise EvalError(f"this Python has no {DEFAULT_TEXT} (the default text); give one with --text FILE")


def read_text(path):
    """The UTF-8 text of ``path``, one ``EvalError`` when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise EvalError(f"--text {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise EvalError(f"--text {path!r}: {exc.strerror or exc}") from None


def token_ids(tokenizer, text, n_tokens):
    """The first ``n_tokens`` token ids of ``text`` (fewer when the text is shorter), as
    a 1-D ``torch.long`` tensor. The tokenizer adds its special tokens as it would for
    any input (a BOS token where the model expects one)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0, :n_tokens]
    if ids.numel() < 2:
        raise EvalError(f"the text gives {ids.numel()} token(s); at least 2 are needed to predict one")
    return ids


def windows(n_tokens, window):
    """``(start, stop)`` of each window; the last one may be shorter (and is dropped when it
    holds a single token, which predicts nothing)."""
    return [(s, min(s + window, n_tokens)) for s in range(0, n_tokens, window) if min(s + window, n_tokens) - s > 1]


# --- the measures ---------------------------------------------------------------------------

def _logits(model, chunk):
    return model(chunk[None]).logits[0, :-1].float()


def perplexity(model, ids, window=512):
    """Perplexity of ``model`` on ``ids`` read in windows of ``window`` tokens.

    Parameters
    ----------
    model : callable
        A causal LM returning an object with ``.logits`` of shape (1, n, vocab).
    ids : torch.Tensor
        1-D token ids.
    window : int, default 512

    Returns
    -------
    float
        ``exp`` of the mean negative log-likelihood of every token after the first of
        each window.
    """
    return evaluate(model, ids, window)["perplexity"]


def _bar(total, progress):
    if not progress:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="window", desc="eval", file=sys.stderr, leave=False)


def evaluate(model, ids, window=512, reference=None, progress=False):
    """Perplexity of ``model`` and, with ``reference``, its distance to the reference's
    next-token distributions over the same tokens.

    Parameters
    ----------
    model, reference : callable
        Causal LMs (see ``perplexity``) with the same vocabulary.
    ids : torch.Tensor
        1-D token ids.
    window : int, default 512
    progress : bool, default False
        Show a progress bar over the windows (on stderr).

    Returns
    -------
    dict
        ``perplexity``, ``nll`` (mean, nats), ``predicted`` (tokens scored), ``windows``;
        with a reference also ``reference_perplexity``, ``kl`` (``mean``, ``stderr``,
        ``max`` and the quantiles ``p50``, ``p90``, ``p99``, ``p99.9`` of the per-token
        ``KL(P_ref || P_model)`` in nats) and ``same_top1`` (the fraction of tokens
        where both rank the same token first).
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ValueError(f"window must be an integer of at least 2, got {window!r}")
    spans = windows(int(ids.numel()), window)
    nll = nll_ref = 0.0
    kls, same = [], 0
    with torch.inference_mode(), _bar(len(spans), progress) as bar:
        for start, stop in spans:
            chunk = ids[start:stop]
            target = chunk[1:]
            logp = torch.log_softmax(_logits(model, chunk), dim=-1)
            nll -= float(logp.gather(1, target[:, None]).double().sum())
            if reference is not None:
                ref_logp = torch.log_softmax(_logits(reference, chunk), dim=-1)
                if ref_logp.shape != logp.shape:
                    raise EvalError(f"the models' vocabularies differ: {ref_logp.shape[-1]} (SRC) "
                                     f"vs {logp.shape[-1]} (MODEL) logits")
                nll_ref -= float(ref_logp.gather(1, target[:, None]).double().sum())
                kls.append((ref_logp.exp() * (ref_logp - logp)).double().sum(-1))
                same += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
            if bar is not None:
                bar.update(1)
    count = sum(stop - start - 1 for start, stop in spans)
    result = {"perplexity": math.exp(nll / count), "nll": nll / count, "predicted": count, "windows": len(spans)}
    if reference is not None:
        kl = torch.cat(kls).numpy()
        result["reference_perplexity"] = math.exp(nll_ref / count)
        result["kl"] = {"mean": float(kl.mean()),
                        "stderr": float(kl.std(ddof=1) / math.sqrt(kl.size)) if kl.size > 1 else 0.0,
                        "max": float(kl.max()),
                        **{f"p{100 * q:g}": float(np.quantile(kl, q)) for q in _QUANTILES}}
        result["same_top1"] = same / count
    return result


def is_causal(config):
    """True for a causal language model (next-token logits), False for an encoder such as
    BERT or a sentence-transformers model, judged by the config's architectures."""
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def compare_embeddings(model, reference, ids, window=512, progress=False):
    """How close an encoder's outputs stay to the reference's on the same tokens.

    The tokens are read in windows (at most the models' position limit); for each window
    the cosine similarity of the mean-pooled last hidden states (the sentence embedding
    sentence-transformers' mean pooling gives) and of every token's hidden state.

    Returns
    -------
    dict
        ``embedding_cosine`` (``mean``, ``min`` over windows), ``token_cosine`` (``mean``,
        ``p1``: the 1st percentile over tokens), ``windows``, ``tokens``.
    """
    limit = min(window, getattr(model.config, "max_position_embeddings", window) or window)
    spans = windows(int(ids.numel()), max(limit, 2))
    pooled, per_token = [], []
    with torch.inference_mode(), _bar(len(spans), progress) as bar:
        for start, stop in spans:
            chunk = ids[start:stop][None]
            a = model(input_ids=chunk).last_hidden_state[0].double()
            b = reference(input_ids=chunk).last_hidden_state[0].double()
            pooled.append(float(torch.nn.functional.cosine_similarity(a.mean(0), b.mean(0), dim=0)))
            per_token.append(torch.nn.functional.cosine_similarity(a, b, dim=-1))
            if bar is not None:
                bar.update(1)
    tokens = torch.cat(per_token).numpy()
    return {"embedding_cosine": {"mean": float(np.mean(pooled)), "min": float(np.min(pooled))},
            "token_cosine": {"mean": float(tokens.mean()), "p1": float(np.quantile(tokens, 0.01))},
            "windows": len(spans), "tokens": int(ids.numel())}


# --- the models -----------------------------------------------------------------------------

class Loaded:
    """A model opened for evaluation: ``model`` (float32, eval mode), ``tokenizer`` (or
    None, with ``no_tokenizer`` saying why), ``kind`` and ``path``."""

    def __init__(self, path, kind, model, tokenizer, no_tokenizer=None):
        self.path, self.kind, self.model, self.tokenizer = path, kind, model, tokenizer
        self.no_tokenizer = no_tokenizer

    def describe(self):
        return KINDS[self.kind]


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _quiet():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _tokenizer(transformers, path, **kw):
    """The folder's (or GGUF file's) tokenizer, or ``(None, why)``."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return None, "no tokenizer files"
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, **kw), None
    except Exception as exc:  # a GGUF without tokenizer.ggml.*, a broken tokenizer.json, ...
        return None, _first_line(exc)


def load(path, kind, config=None, need_tokenizer=False):
    """Open ``path`` for evaluation (see the module's description).

    Parameters
    ----------
    path : str
        A ``.gguf`` file, or a Hugging Face, nbwoq-format or GPTQ folder.
    kind : {"gguf", "hf", "nbwoq", "gptq"}
        What ``path`` holds (``nbwoq.command.evaluation.model_kind`` tells, from the files).
    config : transformers.PretrainedConfig, optional
        The architecture for an nbwoq-format folder without ``config.json``: the reference
        model's.
    need_tokenizer : bool, default False
        Refuse (before loading the weights) a model without a usable tokenizer.

    Returns
    -------
    Loaded

    Raises
    ------
    EvalError
        Loading fails (one line saying why).
    """
    path = os.fspath(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if kind == "gptq":
        _check_gptqmodel(path)
    transformers = _quiet()
    name = os.path.basename(path)
    # the tokenizer first: a model that cannot be read without one fails before its weights load
    tokenizer, why = _tokenizer(transformers, path, **({"gguf_file": name} if kind == "gguf" else {}))
    if tokenizer is None and need_tokenizer:
        raise EvalError(f"{path!r} has no usable tokenizer ({why}); give --against a model that has one")
    try:
        if kind == "gguf":
            folder = os.path.dirname(os.path.abspath(path))
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        elif kind == "hf":
            auto = transformers.AutoModelForCausalLM
            if not is_causal(transformers.AutoConfig.from_pretrained(path)):
                auto = transformers.AutoModel  # an encoder: its hidden states are compared
            model = auto.from_pretrained(path, dtype=torch.float32)
        elif kind == "gptq":
            model = _load_gptq(transformers, path)
        else:
            model = nbwoq_model(path, config)
    except EvalError:
        raise
    except Exception as exc:  # transformers' and gguf's own errors (ValueError too): one line for the command
        raise EvalError(f"{path!r}: cannot load it as a {kind} model ({_first_line(exc)})") from None
    model.eval()
    return Loaded(path, kind, model, tokenizer, why)


def _check_gptqmodel(path):
    if importlib.util.find_spec("gptqmodel") is None:
        raise EvalError(f"{path!r} is a GPTQ checkpoint; evaluating it needs gptqmodel "
                         "(pip install gptqmodel==7.6.0 optimum==2.3.0, in an environment of its own)")


def _load_gptq(transformers, path):
    # the default CPU backend is lossy and torch.compile costs minutes per checkpoint
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    cfg = json.load(open(os.path.join(path, "config.json")))["quantization_config"]
    qc = transformers.GPTQConfig(bits=cfg["bits"], group_size=cfg["group_size"], backend="gptq_torch")
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu",
                                                             quantization_config=qc)


def nbwoq_model(folder, config=None):
    """A transformers model holding the dequantized weights of an nbwoq-format folder.

    The architecture comes from the folder's ``config.json`` (else ``config``, the reference
    model's), built with ``AutoModelForCausalLM.from_config`` in float32; every weight is
    ``nbwoq.dequantize(nbwoq.load(folder))``, under the names ``nbwoq quantize`` kept from
    the Hugging Face source.

    Raises
    ------
    EvalError
        No architecture, or weights that do not fit it (missing, extra or misshapen).
    """
    import nbwoq  # the public reader (nbwoq.load is the formats layer's, re-exported by the package)

    transformers = _quiet()
    if os.path.isfile(os.path.join(folder, "config.json")):
        config = transformers.AutoConfig.from_pretrained(folder)
    elif config is None:
        raise EvalError(f"{folder!r} has no config.json: give the model it was quantized from with "
                        "--against, whose architecture it shares")
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # a reference's (GGUF, GPTQ); these weights are plain
        delattr(config, "quantization_config")
    auto = transformers.AutoModelForCausalLM if is_causal(config) else transformers.AutoModel
    model = auto.from_config(config, dtype=torch.float32)
    state = nbwoq.dequantize(nbwoq.load(folder))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise EvalError(f"{folder!r}: the weights do not fit its architecture ({_first_line(exc)})") from None
    tied = set()
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:
        tied = {k for k, v in model.state_dict(keep_vars=True).items() if v is out_emb.weight}
    missing = [k for k in missing if k not in tied]
    # buffers older checkpoints saved (BERT's position_ids), which the model now makes itself
    buffers = {k for k, _ in model.named_buffers()}
    unexpected = [k for k in unexpected if k not in buffers]
    if missing or unexpected:
        raise EvalError(f"{folder!r}: the weights do not fit its architecture "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


@contextlib.contextmanager
def quiet_loading():
    """No loading bars from transformers while models load. Its GGUF loader draws a plain
    tqdm bar on ``sys.stderr`` (``TQDM_DISABLE`` is read only when tqdm is imported), so
    that goes to a buffer; errors still come as exceptions."""
    logging = _quiet().utils.logging
    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_on:
            logging.enable_progress_bar()
