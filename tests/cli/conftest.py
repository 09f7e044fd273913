"""Small generated checkpoints shared by the CLI tests (generated once per session)."""

import numpy as np
import pytest

from nbwoq import _safetensors_io as st
from nbwoq.checkpoint import write_checkpoint

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128)


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory):
    return str(write_checkpoint(str(tmp_path_factory.mktemp("tiny_bf16")), **TINY))


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory):
    return str(write_checkpoint(str(tmp_path_factory.mktemp("tiny_f32")), dtype="float32", **TINY))


@pytest.fixture(scope="session")
def tiny_sharded(tmp_path_factory):
    # about 10 KiB shards: several shards, so resume has something to keep
    return str(write_checkpoint(str(tmp_path_factory.mktemp("tiny_sharded")), shard_bytes=40_000, **TINY))
