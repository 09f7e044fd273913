"""gguf-py's own ``SpecialVocab`` as the oracle of the special vocabulary nbwoq writes.

llama.cpp's converter writes ``gguf.SpecialVocab(folder, ...).add_to_gguf(writer)`` for
both tokenizers; the oracle runs exactly that on a folder and returns the keys it wrote.
It runs in a subprocess, so that a llama.cpp source tree's gguf-py (``$NBWOQ_GGUF_PY``:
its ``gguf-py`` folder, e.g. ``vendor/llama.cpp/gguf-py`` of the llama-cpp-python sdist)
can stand in for the installed release without clashing with it.

nbwoq follows the newer llama.cpp source, which reads a ``ByteLevel`` post-processor as
adding neither bos nor eos (``add_*_token`` False unless something else says so); the
installed gguf 0.19.0 release predates that rule and leaves both flags unset. With such
an oracle ``expected`` applies that one rule to its keys (when the oracle's own source
has the rule, nothing is changed); folders where the two releases differ otherwise are
compared only against a newer oracle.
"""

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import inspect, json, logging, sys
logging.disable(logging.CRITICAL)
import gguf
newest = "ByteLevel" in inspect.getsource(gguf.SpecialVocab)
out = []
for folder, n_vocab, load_merges in json.loads(sys.argv[1]):
    w = gguf.GGUFWriter(None, "llama")
    try:
        gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    except Exception as exc:
        out.append({"error": f"{type(exc).__name__}: {exc}"})
        continue
    out.append({k: [v.value, v.type.name] for k, v in w.kv_data[0].items() if k != "general.architecture"})
print(json.dumps({"newest": newest, "source": gguf.__file__, "keys": out}))
"""


def oracle(requests):
    """``(keys, newest)``: for each ``(folder, n_vocab, load_merges)`` the keys gguf-py's
    ``SpecialVocab`` writes (``{key: [value, type name]}``), and whether that gguf-py has
    the ``ByteLevel`` rule."""
    env = dict(os.environ)
    source = os.environ.get("NBWOQ_GGUF_PY")
    if source:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(requests)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if source:
        assert result["source"].startswith(os.path.abspath(source)), result["source"]
    return result["keys"], result["newest"]


def _has_byte_level(folder):
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        post = json.load(f).get("post_processor") or {}
    return any(p.get("type") == "ByteLevel" for p in post.get("processors", [post]))


def expected(keys, folder, newest):
    """The oracle's keys with the newer ``ByteLevel`` rule applied when the oracle lacks it."""
    keys = dict(keys)
    if not newest and _has_byte_level(folder):
        for flag in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
            keys.setdefault(flag, [False, "BOOL"])
    return keys


def writer_keys(writer):
    """The keys a ``GGUFWriter`` holds, as ``oracle`` returns them."""
    return {k: [v.value, v.type.name] for k, v in writer.kv_data[0].items() if k != "general.architecture"}
