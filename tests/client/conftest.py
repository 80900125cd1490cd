"""Fixtures shared by the engine tests of kvstore.client."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_model_dir(tmp_path_factory):
    """The local Llama-style model and tokenizer (kvstore.local_model), built once per session."""
    pytest.importorskip("transformers")
    from kvstore.local_model import build_local_model

    return build_local_model(tmp_path_factory.mktemp("local_model"))
