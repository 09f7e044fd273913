"""Files: ``nbwoq.load`` + ``dequantize`` on saved checkpoints whose metadata is rewritten
with bogus values; each must load and decode or be refused cleanly."""

import tempfile

import numpy as np
from hypothesis import strategies as st

import nbwoq

from .core import FuzzFailure


LOAD_CONFIGS = {
    "int4-asym-g16": dict(bits=4, group_size=16),
    "int8-sym-full": dict(bits=8, group_size=-1, scheme="sym", full_range=True),
    "nf4-g32": dict(dtype="nf4", group_size=32),
    "int16-asym-g64": dict(bits=16, group_size=64),
    "int2-sym-g7": dict(bits=2, group_size=7, scheme="sym"),
}


META_VALUES = {
    "shape": ([0, 0], [4], [400, 640], [4, 63], [4, 65], "x", None, [-1, 64], [4.5, 64], [3, 64]),
    "bits": (0, 17, 3, "4", None, True, 8),
    "slot": (0, 1, 2, 3, 8, 16, 32),
    "group_size": (0, -2, 1, 64, 65, "16", None),
    "qmin": (-8, 0, -100, 1.5, -128),
    "codebook": ("nf4", "int", "zz", None, "fp4"),
    "scheme": ("sym", "asym", "x"),
    "full_range": (True, "no", None),
}


_load_files = {}


def _load_base(name):
    """A small nbwoq-format file of configuration ``name`` (made once per process)."""
    if name not in _load_files:
        folder = tempfile.mkdtemp(prefix="nbwoq-fuzz-load-")
        w = np.random.default_rng(7).standard_normal((4, 64)).astype(np.float32)
        path = f"{folder}/{name}.safetensors"
        nbwoq.save({"layers.0.fc.weight": w, "layers.0.g.weight": w[:3, :33].copy()}, path,
                        **LOAD_CONFIGS[name])
        with open(path, "rb") as f:
            _load_files[name] = f.read()
    return _load_files[name]


def _rewrite_meta(raw, edit):
    """``raw`` (a safetensors file) with its nbwoq.tensors metadata passed through ``edit``."""
    import json
    import struct

    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header["__metadata__"]
    try:
        meta["nbwoq.tensors"] = edit(meta["nbwoq.tensors"])
    except ValueError:  # an earlier edit left text that is not JSON
        meta["nbwoq.tensors"] = edit("{}")
    body = json.dumps(header).encode()
    body += b" " * (-(8 + len(body)) % 8)
    return struct.pack("<Q", len(body)) + body + raw[8 + n:]


@st.composite
def load_cases(draw):
    """``(base name, mutated file bytes, description)``."""
    import json

    base = draw(st.sampled_from(sorted(LOAD_CONFIGS)))
    raw = _load_base(base)
    steps = []
    # metadata edits first (they need an intact header), then raw damage
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("meta-field", "meta-field", "meta-drop", "meta-json")))
        if kind in ("meta-field", "meta-drop"):
            field = draw(st.sampled_from(sorted(META_VALUES)))
            tensor = draw(st.sampled_from(("layers.0.fc.weight", "layers.0.g.weight")))
            value = draw(st.sampled_from(META_VALUES[field]))

            def edit(text, field=field, tensor=tensor, value=value, drop=kind == "meta-drop"):
                m = json.loads(text)
                if not isinstance(m, dict) or not isinstance(m.get(tensor), dict):
                    return text
                if drop:
                    m[tensor].pop(field, None)
                else:
                    m[tensor][field] = value
                return json.dumps(m)

            raw = _rewrite_meta(raw, edit)
            steps.append(f"{kind} {tensor}.{field}={value!r}")
        else:
            text = draw(st.sampled_from(("[]", "{", '{"x": 1}', '{"layers.0.fc.weight": []}', "null")))
            raw = _rewrite_meta(raw, lambda _, text=text: text)
            steps.append(f"meta-json {text}")
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(("flip-byte", "flip-byte", "truncate", "append")))
        if kind == "flip-byte" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
            steps.append(f"flip byte {i}")
        elif kind == "truncate":
            i = draw(st.integers(0, len(raw)))
            raw = raw[:i]
            steps.append(f"truncate at {i}")
        elif kind == "append":
            raw = raw + b"\0" * draw(st.integers(1, 64))
            steps.append("append zeros")
    return base, raw, steps


def check_load_case(case):
    """``load`` then ``dequantize`` a (possibly corrupt) file: a result whose arrays have the
    recorded shapes, or ValueError/TypeError. Returns the outcome name."""
    base, raw, steps = case
    folder = tempfile.mkdtemp(prefix="nbwoq-fuzz-load-")
    path = f"{folder}/m.safetensors"
    with open(path, "wb") as f:
        f.write(raw)
    try:
        loaded = nbwoq.load(path)
        out = nbwoq.dequantize(loaded)
    except (ValueError, TypeError):
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__} (only ValueError/TypeError allowed): {exc}\n{base}: {steps}") from exc
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    for name, q in loaded.items():
        if isinstance(q, nbwoq.QuantizedTensor) and out[name].shape != q.shape:
            raise FuzzFailure(f"dequantized {name} has shape {out[name].shape}, recorded {q.shape}\n{base}: {steps}")
    return "ok"
