"""``block_tokens`` as a connector setting: read from kv_connector_extra_config, validated."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kvstore.client.vllm_settings import ConnectorSettings, EngineGeometry
from kvstore.errors import InvalidArgument

vllm_config = pytest.importorskip("vllm.config")


def settings(**extra) -> ConnectorSettings:
    transfer = vllm_config.KVTransferConfig(kv_connector="KVStoreConnector", kv_role="kv_both",
                                            kv_connector_extra_config=extra)
    model = SimpleNamespace(served_model_name="m", model="m")
    return ConnectorSettings.from_vllm(SimpleNamespace(kv_transfer_config=transfer,
                                                       model_config=model))


def geometry(block_size: int) -> EngineGeometry:
    return EngineGeometry(("l0", "l1"), block_size, 2, 64, torch.float32)


def test_block_tokens_default_and_set():
    assert settings().block_tokens == 256
    assert settings(block_tokens=64).block_tokens == 64
    assert settings(block_tokens="32").block_tokens == 32  # a JSON string from the CLI
    assert geometry(32).layout(settings(block_tokens=64)).block_tokens == 64


@pytest.mark.parametrize("bad", [0, -32, "many", 1.5, True])
def test_block_tokens_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(InvalidArgument, match="block_tokens"):
        settings(block_tokens=bad)


def test_block_tokens_not_a_multiple_of_vllms_block_names_both():
    with pytest.raises(InvalidArgument) as info:
        geometry(32).layout(settings(block_tokens=48))
    text = str(info.value)
    assert "block_tokens 48" in text and "block_size 32" in text and "multiple of 32" in text
