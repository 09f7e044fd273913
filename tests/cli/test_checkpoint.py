"""The generated default checkpoint: deterministic, Llama-shaped, with outliers."""

import os

import numpy as np
import pytest

from nbwoq.command.demo_model import generate_tensor, write_checkpoint

from cli_helpers import TINY


def test_same_arguments_same_bytes(tmp_path, tiny_bf16):
    again = write_checkpoint(str(tmp_path / "again"), **TINY)
    for f in ("model.safetensors", "config.json"):
        assert open(os.path.join(again, f), "rb").read() == open(os.path.join(tiny_bf16, f), "rb").read()


def test_gaussian_with_outliers():
    w = generate_tensor("model.layers.0.mlp.up_proj.weight", (512, 256), seed=0)
    z = np.abs(w) * np.sqrt(256)
    assert 0.9 < float(np.std(w) * np.sqrt(256)) < 1.3
    assert 0.0005 < float(np.mean(z > 6)) < 0.002  # ~0.1% outliers far beyond a Gaussian's tail


def test_transformers_loads_it(tiny_bf16):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_bf16)
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == TINY["num_hidden_layers"]
