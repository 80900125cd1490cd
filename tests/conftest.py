"""Shared pytest fixtures and markers."""

from __future__ import annotations

import pytest


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing or broken
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def local_model_dir(tmp_path_factory):
    """The local Llama-style model and tokenizer (kvstore.demo.local_model), built once per session."""
    pytest.importorskip("transformers")
    from kvstore.demo.local_model import build_local_model

    return build_local_model(tmp_path_factory.mktemp("local_model"))
