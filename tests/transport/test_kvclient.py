"""KVClient.connect(url) over each carrier: the same Namespace API as the embedded store."""

from __future__ import annotations

import asyncio

import pytest
import torch

from kvstore.client import AsyncKVClient, KVClient
from kvstore.errors import Unavailable
from tests.transport.conftest import small_layout, tokens_for


def kv_for(layout, ntokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layout.kv_shape(ntokens), generator=g).to(layout.torch_dtype)


def test_kvclient_matches_embedded(daemon, carrier):
    layout = small_layout()
    remote = KVClient.connect(daemon.urls[0], timeout=10)
    local = KVClient.connect("embedded", cpu_bytes="32MiB")
    try:
        rns, lns = remote.namespace(layout), local.namespace(layout)
        assert rns.uses_leases == (carrier == "shm")  # shm copies straight into the arena
        toks = tokens_for(1, 5)
        kv = kv_for(layout, 85, seed=1)  # 5 blocks and a partial tail
        assert rns.lookup(toks) == lns.lookup(toks) == 0
        assert rns.get(toks) == (0, None)
        assert rns.put(toks, kv[:, :, :48]) == lns.put(toks, kv[:, :, :48]) == 48
        assert rns.put(toks, kv) == lns.put(toks, kv) == 80
        for probe in (toks, toks[:40], toks[:8], tokens_for(2, 2)):
            assert rns.lookup(probe) == lns.lookup(probe)
            (n_r, kv_r), (n_l, kv_l) = rns.get(probe), lns.get(probe)
            assert n_r == n_l
            if n_r:
                assert torch.equal(kv_r, kv_l) and torch.equal(kv_r, kv[:, :, :n_r])
        assert rns.delete(toks[:32]) == lns.delete(toks[:32])
        assert rns.lookup(toks) == lns.lookup(toks) == 0
        remote.flush()
    finally:
        remote.close()
        local.close()


def test_kvclient_remote_defaults_to_soft_misses(sockdir):
    layout = small_layout()
    c = KVClient.connect(f"shm://{sockdir}/none.sock", connect_timeout=1)
    ns = c.namespace(layout)
    toks = tokens_for(3, 2)
    assert ns.lookup(toks) == 0
    assert ns.get(toks) == (0, None)
    assert ns.put(toks, kv_for(layout, 32, 3)) == 0
    c.close()
    strict = KVClient.connect("tcp://127.0.0.1:9", strict=True, connect_timeout=1)
    ns = strict.namespace(layout)
    with pytest.raises(Unavailable):
        ns.lookup(toks)
    strict.close()


def test_kvclient_tenant(daemon):
    layout = small_layout()
    a = KVClient.connect(daemon.urls[0], tenant="a")
    b = KVClient.connect(daemon.urls[0], tenant="b")
    toks = tokens_for(4, 2)
    assert a.namespace(layout).put(toks, kv_for(layout, 32, 4)) == 32
    assert b.namespace(layout).lookup(toks) == 0
    assert a.namespace(layout).lookup(toks) == 32
    a.close()
    b.close()


def test_async_kvclient(daemon):
    layout = small_layout()

    async def main():
        async with await AsyncKVClient.connect(daemon.urls[0], timeout=10) as c:
            ns = await c.namespace(layout)
            toks = tokens_for(5, 3)
            kv = kv_for(layout, 48, 5)
            assert await ns.lookup(toks) == 0
            stored, looked = await asyncio.gather(ns.put(toks, kv), ns.lookup(toks[:16]))
            assert stored == 48
            n, got = await ns.get(toks)
            assert n == 48 and torch.equal(got, kv)
            assert await ns.delete(toks) >= 1
            await c.flush()

    asyncio.run(main())
