"""Helpers for the CLI tests."""

import numpy as np

from nbwoq.formats import safetensors_io as st

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128)


def read_tensor(folder_or_file, name):
    """A source tensor as float32 (bfloat16 widened exactly), read independently of the CLI."""
    import os

    files = [folder_or_file] if folder_or_file.endswith(".safetensors") else [
        os.path.join(folder_or_file, f) for f in sorted(os.listdir(folder_or_file)) if f.endswith(".safetensors")]
    for path in files:
        tensors, _ = st.read_header(path)
        if name in tensors:
            with st.TensorMap(tensors[name]) as a:
                if tensors[name].dtype == "BF16":
                    return (a.astype(np.uint32) << np.uint32(16)).view(np.float32)
                return np.array(a, dtype=np.float32)
    raise KeyError(name)


def llama_cpp_python():
    """A Python that imports ``llama_cpp`` (``NBWOQ_LLAMA_CPP_PYTHON``, or the integration
    script's virtual environments); skips the test when there is none."""
    import os
    import subprocess

    import pytest

    candidates = [os.environ.get("NBWOQ_LLAMA_CPP_PYTHON"), "/tmp/nbwoq-integration/llvenv/bin/python",
                  "/tmp/nbwoq-integration/venv/bin/python"]
    for python in filter(None, candidates):
        if os.access(python, os.X_OK) and subprocess.run([python, "-c", "import llama_cpp"],
                                                         capture_output=True).returncode == 0:
            return python
    pytest.skip("no Python with llama_cpp (set NBWOQ_LLAMA_CPP_PYTHON; scripts/integration.sh builds one)")


def interrupt_at_call(monkeypatch, n, names=("clip_ratios",)):
    """Make ``quantizer``'s functions ``names`` (each called with the tensor's name 4th:
    the general path's ``clip_ratios``, the one-pass path's ``quantize_packed``) raise
    ``KeyboardInterrupt`` at the ``n``-th call among them, as Ctrl-C in the middle of a
    run. Returns ``(calls, restore)``: the tensor names seen, and a function that puts
    the originals back."""
    from nbwoq.formats import quantizer

    calls = []
    reals = {name: getattr(quantizer, name) for name in names}

    def wrap(real):
        def interrupted(*a, **k):
            calls.append(a[3])
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)
        return interrupted

    for name, real in reals.items():
        monkeypatch.setattr(quantizer, name, wrap(real))

    def restore():
        for name, real in reals.items():
            monkeypatch.setattr(quantizer, name, real)

    return calls, restore
