"""llama.cpp's own block encoders and decoders, as a test oracle (built on demand).

``load()`` compiles ``ggml/src/ggml-quants.c`` from a llama.cpp source tree found in a
``llama-cpp-python`` sdist (or an unpacked llama.cpp checkout) together with four stub
functions, into a shared library in a cache directory, and returns a ``ctypes`` handle;
it returns ``None`` when there is no C compiler or no source, and the tests skip.
Nothing of llama.cpp is kept in this repository: the source is read from

* ``$NBWOQ_LLAMA_CPP_SRC``: a ``llama-cpp-python-*.tar.gz`` sdist or a llama.cpp tree;
* otherwise ``llama_cpp_python-*.tar.gz`` in ``~/.cache/nbwoq`` or ``/tmp/kq_oracle``
  (``pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36``).

It is compiled as a release build (``-O2 -DNDEBUG``: llama.cpp's ``nearest_int`` asserts
on out-of-range values in debug builds) with no ``-march`` flag, so no FMA contraction:
the portable arithmetic nbwoq reproduces.
"""

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile

import numpy as np

_STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d\n", file, line); abort();
}
size_t ggml_row_size(int type, int64_t ne) { (void)type; (void)ne; abort(); }
size_t ggml_type_size(int type) { (void)type; abort(); }
const char * ggml_type_name(int type) { (void)type; return "?"; }
"""

_MEMBERS = ("ggml/src/ggml-quants.c", "ggml/src/ggml-quants.h", "ggml/src/ggml-common.h", "ggml/src/ggml-impl.h",
            "ggml/src/ggml-cpu/ggml-cpu-impl.h", "ggml/include/")

_ENCODE = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q8_0": "q8_0", "Q2_K": "q2_K",
           "Q3_K": "q3_K", "Q4_K": "q4_K", "Q5_K": "q5_K", "Q6_K": "q6_K", "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs"}


def _source():
    given = os.environ.get("NBWOQ_LLAMA_CPP_SRC")
    if given:
        return given if os.path.exists(given) else None
    for d in (os.path.expanduser("~/.cache/nbwoq"), "/tmp/kq_oracle"):
        found = sorted(glob.glob(os.path.join(d, "llama_cpp_python-*.tar.gz")))
        if found:
            return found[-1]
    return None


def _extract(src, dest):
    """Copy the few files needed into ``dest``/ggml; return True when they were found."""
    if os.path.isdir(src):
        root = src if os.path.isdir(os.path.join(src, "ggml")) else os.path.join(src, "vendor", "llama.cpp")
        if not os.path.isfile(os.path.join(root, "ggml/src/ggml-quants.c")):
            return False
        shutil.copytree(os.path.join(root, "ggml/src"), os.path.join(dest, "ggml/src"), dirs_exist_ok=True)
        shutil.copytree(os.path.join(root, "ggml/include"), os.path.join(dest, "ggml/include"), dirs_exist_ok=True)
        return True
    with tarfile.open(src) as tar:
        wanted = []
        for m in tar.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and m.isfile() and any(parts[1].startswith(p) for p in _MEMBERS):
                m.name = parts[1]
                wanted.append(m)
        if not any(m.name.endswith("ggml-quants.c") for m in wanted):
            return False
        tar.extractall(dest, members=wanted, filter="data")
    return True


def load():
    """The compiled oracle (``ctypes.CDLL``), or ``None`` when it cannot be built."""
    src = _source()
    cc = shutil.which("cc") or shutil.which("gcc")
    if src is None or cc is None:
        return None
    key = hashlib.sha256(f"{os.path.abspath(src)}:{os.path.getmtime(src)}:2".encode()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nbwoq-tests")
    lib = os.path.join(cache, f"ggml_quants_{key}.so")
    if not os.path.exists(lib):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            if not _extract(src, tmp):
                return None
            with open(os.path.join(tmp, "stubs.c"), "w") as f:
                f.write(_STUBS)
            out = os.path.join(tmp, "lib.so")
            inc = [f"-I{tmp}/ggml/include", f"-I{tmp}/ggml/src"]
            cmd = [cc, "-O2", "-DNDEBUG", "-fPIC", "-shared", "-std=gnu11", *inc, f"{tmp}/ggml/src/ggml-quants.c",
                   f"{tmp}/stubs.c", "-o", out, "-lm"]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                return None
            shutil.move(out, lib)
    return ctypes.CDLL(lib)


def encode(lib, values, type_name, row_bytes):
    """llama.cpp's ``quantize_row_<type>_ref`` of each row of float32 ``values``."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    out = np.zeros((x.shape[0], row_bytes), dtype=np.uint8)
    fn = getattr(lib, f"quantize_row_{_ENCODE[type_name]}_ref")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for r in range(x.shape[0]):
        fn(x[r].ctypes.data, out[r].ctypes.data, x.shape[1])
    return out


def decode(lib, raw, type_name, cols):
    """llama.cpp's ``dequantize_row_<type>`` of each row of ``raw``."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.zeros((raw.shape[0], cols), dtype=np.float32)
    fn = getattr(lib, f"dequantize_row_{_ENCODE[type_name]}")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for r in range(raw.shape[0]):
        fn(raw[r].ctypes.data, out[r].ctypes.data, cols)
    return out


def encode_iq4_nl_search(lib, values):
    """llama.cpp's ``quantize_iq4_nl`` without importance matrix (what llama-quantize writes)."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    rows, cols = x.shape
    out = np.zeros((rows, cols // 32 * 18), dtype=np.uint8)
    fn = lib.quantize_iq4_nl
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn(x.ctypes.data, out.ctypes.data, rows, cols, None)
    return out
