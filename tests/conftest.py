"""Shared pytest fixtures and markers (the unit/integration rule: tests/markers.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from tests.markers import check_markers, kind_of, refuse_out_of_process

# Each test starts with the global RNGs (random, numpy's legacy one, torch) seeded
# with this, so that a test's draws do not depend on which tests ran before it and
# a failure replays alone (``pytest -k``). Tests with their own generators keep them.
TEST_SEED = int(os.environ.get("KVSTORE_TEST_SEED", "0"), 0)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing or broken
        return False


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        if kind_of(item) == "integration":
            if item.get_closest_marker("integration") is None:  # from INTEGRATION_FIXTURES
                item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
    bad = check_markers(items)
    if bad:
        raise pytest.UsageError("each test is exactly one of unit/integration "
                                "(tests/markers.py):\n  " + "\n  ".join(bad))
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"global RNGs seeded with {TEST_SEED} before each test (KVSTORE_TEST_SEED)"


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    random.seed(TEST_SEED)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(TEST_SEED)
    if "torch" in sys.modules:  # not imported yet: it starts from its fixed default seed
        sys.modules["torch"].manual_seed(TEST_SEED)


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request, monkeypatch):
    """A unit test that starts an interpreter, ``kvstore`` or etcd fails: mark it integration."""
    if request.node.get_closest_marker("unit") is not None:
        monkeypatch.setattr(subprocess.Popen, "__init__",
                            refuse_out_of_process(subprocess.Popen.__init__))


@pytest.fixture(scope="session")
def local_model_dir(tmp_path_factory):
    """The local Llama-style model and tokenizer (kvstore.demo.local_model), built once per session."""
    pytest.importorskip("transformers")
    from kvstore.demo.local_model import build_local_model

    return build_local_model(tmp_path_factory.mktemp("local_model"))
