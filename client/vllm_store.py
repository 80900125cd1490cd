"""One KVClient per store URL per process, shared by the connector's two halves.

vLLM builds the connector twice: once for the scheduler (lookups) and once
for each worker (loads and saves). In a single-process engine
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) both live in one process, and with
``url="embedded"`` they must see the same in-process store, or the
scheduler would never find what the worker saved. So clients are shared
by URL here. (With a multi-process engine, use a daemon: ``shm://`` or
``tcp://``; an embedded store would be private to each process.)

``shared_client(url)`` is also how a test or a tool in the same process
reaches the store that an engine's connector writes to.
"""

from __future__ import annotations

import threading
from typing import Any

from kvstore.client import KVClient

_lock = threading.Lock()
_clients: dict[str, KVClient] = {}


def shared_client(url: str, strict: bool = False, **store: Any) -> KVClient:
    """The process's client for ``url``, connected on first use.

    ``store`` (StoreConfig keywords) configures an embedded store when it is
    created; later calls for the same URL get the existing client.
    """
    with _lock:
        client = _clients.get(url)
        if client is None or client._closed:
            kwargs = store if url == "embedded" else {}
            client = _clients[url] = KVClient.connect(url, strict=strict, **kwargs)
        return client


def close_shared_client(url: str) -> None:
    """Close and forget the shared client of ``url`` (tests; engine shutdown keeps it)."""
    with _lock:
        client = _clients.pop(url, None)
    if client is not None:
        client.close()
