"""``Namespace.hint`` and its asyncio twin, embedded and over a daemon (tcp and shm).

The store holds 16 blocks of a 4-token layout; a prefix whose session ended
goes before an older prefix nobody hinted, and hints never change a lookup.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from kvstore.client import KVClient
from kvstore.client.async_client import AsyncKVClient
from kvstore.errors import InvalidArgument, Unavailable
from kvstore.layout import KVLayout
from kvstore.store import StoreConfig, TieredStore
from kvstore.transport.server import ServerThread

LAYOUT = KVLayout("hints", num_layers=2, num_kv_heads=2, head_dim=8, dtype="float16",
                  block_tokens=4)
BLOCK_BYTES = 2 * 2 * 4 * 2 * 8 * 2
CAPACITY = 16


def toks(start: int, blocks: int) -> list[int]:
    return list(range(start, start + 4 * blocks))


def kv(n: int) -> torch.Tensor:
    return torch.randn(LAYOUT.kv_shape(n)).to(torch.float16)


def put(ns, tokens) -> int:
    return ns.put(tokens, kv(len(tokens)))


def session_end_first(ns) -> None:
    older, ended = toks(10_000, 3), toks(20_000, 3)
    put(ns, older)
    put(ns, ended)
    for i in range(CAPACITY - 6):
        put(ns, toks(100_000 + 100 * i, 1))
    assert ns.hint(ended, session_end=True) == 12
    assert ns.lookup(ended) == 12
    for i in range(3):
        put(ns, toks(500_000 + 100 * i, 1))
    assert ns.lookup(ended) == 0 and ns.lookup(older) == 12


@pytest.fixture(params=["embedded", "tcp", "shm"])
def client(request, tmp_path):
    if request.param == "embedded":
        with KVClient.connect("embedded", cpu_bytes=CAPACITY * BLOCK_BYTES) as c:
            yield c
        return
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * BLOCK_BYTES))
    url = f"shm://{tmp_path}/kv.sock" if request.param == "shm" else "tcp://127.0.0.1:0"
    srv = ServerThread(store, [url]).start()
    with KVClient.connect(srv.urls[0], strict=True) as c:
        yield c
    srv.stop()
    store.close()


def test_session_end_hint_reorders_evictions(client):
    session_end_first(client.namespace(LAYOUT))


def test_keep_until_and_priority_protect(client):
    ns = client.namespace(LAYOUT)
    doc, system = toks(30_000, 2), toks(40_000, 2)
    put(ns, doc)
    put(ns, system)
    assert ns.hint(doc, keep_until=300) == 8
    assert ns.hint(system, priority=5) == 8
    for i in range(2 * CAPACITY):
        put(ns, toks(100_000 + 100 * i, 1))
    assert ns.lookup(doc) == 8 and ns.lookup(system) == 8
    assert ns.hint(toks(90_000, 2), session_end=True) == 0  # not cached: a no-op
    with pytest.raises(InvalidArgument):
        ns.hint(doc, keep_until=-1)


def test_asyncio_twin(client):
    async def main():
        ac = AsyncKVClient(client)
        ns = await ac.namespace(LAYOUT)
        tokens = toks(1, 2)
        await asyncio.to_thread(put, ns.sync, tokens)
        assert await ns.hint(tokens, session_end=True, priority=1) == 8
        assert await ns.hint(tokens + [1, 2, 3], keep_until=1.5) == 8
        assert await ns.lookup(tokens) == 8

    asyncio.run(main())


def test_hint_to_a_daemon_that_is_gone_is_dropped(tmp_path):
    url = f"shm://{tmp_path}/nobody.sock"
    with KVClient.connect(url, connect_timeout=1, retry_interval=0.05) as c:
        ns = c.namespace(LAYOUT)
        assert ns.hint(toks(1, 2), session_end=True) == 0

        async def twin():
            ans = await AsyncKVClient(c).namespace(LAYOUT)
            return await ans.hint(toks(1, 2), priority=3)

        assert asyncio.run(twin()) == 0
    with KVClient.connect(url, strict=True, connect_timeout=1) as c:
        with pytest.raises(Unavailable):
            c.namespace(LAYOUT).hint(toks(1, 2), session_end=True)
