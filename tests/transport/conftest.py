"""Fixtures of the transport tests: a real TieredStore served over each carrier."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import numpy as np
import pytest

from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread

CARRIERS = ["tcp", "shm", "ucx"]
HAVE_UCX = importlib.util.find_spec("ucxx") is not None


def small_layout(model: str = "tiny", block_tokens: int = 16) -> KVLayout:
    # 2 layers x 2 (k,v) x 16 tokens x 2 heads x 16 dim x 2 bytes = 4 KiB blocks
    return KVLayout(model, num_layers=2, num_kv_heads=2, head_dim=16, dtype="float16",
                    block_tokens=block_tokens)


def spec_of(layout: KVLayout | None = None, **kw) -> NamespaceSpec:
    return NamespaceSpec(layout or small_layout(), **kw)


def tokens_for(seed: int, nblocks: int, block_tokens: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50_000, nblocks * block_tokens, dtype=np.uint32)


def blocks_for(tokens: np.ndarray, spec: NamespaceSpec) -> list[np.ndarray]:
    """Deterministic payloads derived from the tokens (block i depends on its prefix)."""
    n = len(tokens) // spec.block_tokens
    out = []
    for i in range(n):
        seed = int(tokens[: (i + 1) * spec.block_tokens].sum()) * 31 + i
        out.append(np.random.default_rng(seed).integers(0, 256, spec.block_bytes, dtype=np.uint8))
    return out


def listen_url(carrier: str, folder: str) -> str:
    if carrier == "shm":
        return f"shm://{folder}/kv.sock"
    return f"{carrier}://127.0.0.1:0"


@pytest.fixture
def sockdir():
    folder = tempfile.mkdtemp(prefix="kvs-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def store():
    s = TieredStore(StoreConfig(cpu_bytes="64MiB"))
    yield s
    s.close()


# ucxx binds every interface; the tests' ucx://127.0.0.1 listeners accept that (transport/ucx.py)
os.environ.setdefault("KVSTORE_UCX_ANY_INTERFACE", "1")


# ucx is integration: its worker costs ~0.7 s to start and stop per test (tests/conftest.py)
@pytest.fixture(params=[c if c != "ucx" else pytest.param(c, marks=pytest.mark.integration)
                        for c in CARRIERS])
def carrier(request):
    if request.param == "ucx" and not HAVE_UCX:
        pytest.skip("ucxx is not installed")
    return request.param


@pytest.fixture
def daemon(store, carrier, sockdir):
    srv = ServerThread(store, [listen_url(carrier, sockdir)]).start()
    yield srv
    srv.stop()


@pytest.fixture
def connect(daemon):
    clients = []

    def make(url: str | None = None, **kwargs) -> RemoteStore:
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("retry_interval", 0.05)
        client = RemoteStore.connect(url or daemon.urls[0], **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
