"""Small generated checkpoints shared by the CLI tests (generated once per session)."""

import pytest

from nbwoq.command.demo_model import write_checkpoint

from cli_helpers import TINY


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
