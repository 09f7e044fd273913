"""Fixtures shared by the torch utility tests."""

import importlib.util
import json
from collections import UserDict
from pathlib import Path

import pytest

try:
    import torch
except ImportError:  # each test module skips itself with importorskip
    torch = None

STRUCTURAL_DIR = Path(__file__).resolve().parents[1] / "golden" / "structural"


@pytest.fixture(scope="session")
def structural_reference():
    """What INC 3.10 returned on the models of ``models.py`` (read-only)."""
    return json.loads((STRUCTURAL_DIR / "structural_reference.json").read_text())


@pytest.fixture(scope="session")
def structural_models():
    """The ``models.py`` module that built the reference's models."""
    spec = importlib.util.spec_from_file_location("structural_models", STRUCTURAL_DIR / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _describe(obj):
    """Describe ``obj`` the way structural_reference.json records values."""
    if isinstance(obj, torch.Tensor):
        return {"tensor": {"shape": list(obj.shape), "dtype": str(obj.dtype).removeprefix("torch.")}}
    if isinstance(obj, UserDict):
        return {"UserDict": {key: _describe(value) for key, value in obj.items()}}
    if isinstance(obj, dict):
        return {"dict": {key: _describe(value) for key, value in obj.items()}}
    if isinstance(obj, tuple):
        return {"tuple": [_describe(value) for value in obj]}
    if isinstance(obj, list):
        return {"list": [_describe(value) for value in obj]}
    if isinstance(obj, torch.nn.Module):
        return {"module": type(obj).__name__}
    return obj


@pytest.fixture(scope="session")
def describe():
    """``describe(obj)``: the reference file's notation for a value."""
    return _describe


def _build(spec):
    """Rebuild a value from its description (tensors get random contents)."""
    if isinstance(spec, dict) and len(spec) == 1:
        ((tag, body),) = spec.items()
        if tag == "tensor":
            dtype = getattr(torch, body["dtype"])
            if dtype.is_floating_point:
                return torch.randn(body["shape"], dtype=dtype)
            return torch.randint(0, 8, body["shape"], dtype=dtype)
        if tag == "dict":
            return {key: _build(value) for key, value in body.items()}
        if tag == "UserDict":
            return UserDict({key: _build(value) for key, value in body.items()})
        if tag == "tuple":
            return tuple(_build(value) for value in body)
        if tag == "list":
            return [_build(value) for value in body]
    return spec


@pytest.fixture(scope="session")
def build_from_description():
    """``build(spec)``: a value matching a description of the reference file."""
    return _build
