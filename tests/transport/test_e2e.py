"""End to end over each carrier: a real TieredStore behind an in-process daemon."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from kvstore.errors import InvalidArgument, NotFound, Unauthorized, Unavailable
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.store_api import StoreStats
from kvstore.transport.auth import TokenAuth
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.transport.conftest import blocks_for, listen_url, spec_of, tokens_for


def eventually(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def joined(blocks) -> bytes:
    return b"".join(bytes(memoryview(b).cast("B")) for b in blocks)


def test_roundtrip_matches_embedded_store(connect):
    spec = spec_of()
    remote = connect()
    local = TieredStore(StoreConfig(cpu_bytes="32MiB"))
    try:
        ns_r, ns_l = remote.register(spec), local.register(spec)
        assert ns_r == ns_l
        toks = tokens_for(1, 6)
        blocks = blocks_for(toks, spec)
        probes = [toks, toks[:40], toks[:16], toks[:15], tokens_for(2, 3), np.concatenate([toks[:32], tokens_for(3, 2)])]
        for probe in probes:
            assert remote.lookup(ns_r, probe) == local.lookup(ns_l, probe) == 0
        assert remote.put(ns_r, toks[:64], blocks[:4]) == local.put(ns_l, toks[:64], blocks[:4]) == 64
        for probe in probes:
            assert remote.lookup(ns_r, probe) == local.lookup(ns_l, probe)
            n_r, got_r = remote.get(ns_r, probe)
            n_l, got_l = local.get(ns_l, probe)
            assert n_r == n_l
            assert joined(got_r) == joined(got_l)
        # extending a cached prefix stores only the new blocks
        assert remote.put(ns_r, toks, blocks) == local.put(ns_l, toks, blocks) == 96
        n, buf = remote.get_into(ns_r, toks)
        assert n == 96 and bytes(buf) == joined(blocks)
        # extra salts the keys
        assert remote.lookup(ns_r, toks, extra=b"lora-1") == 0
        assert remote.delete(ns_r, toks[:48]) == local.delete(ns_l, toks[:48])
        for probe in probes:
            assert remote.lookup(ns_r, probe) == local.lookup(ns_l, probe)
    finally:
        local.close()


def test_miss_and_partial_tail(connect):
    spec = spec_of()
    c = connect()
    ns = c.register(spec)
    assert c.get(ns, tokens_for(9, 2)) == (0, [])
    assert c.get_into(ns, tokens_for(9, 2)) == (0, None)
    toks = tokens_for(10, 2)
    # a partial tail block is not stored; fewer payloads than blocks store the leading ones
    assert c.put(ns, np.concatenate([toks, toks[:5]]), blocks_for(toks, spec)) == 32
    toks3 = tokens_for(11, 3)
    assert c.put(ns, toks3, blocks_for(toks3, spec)[:1]) == 16
    assert c.lookup(ns, toks3) == 16


def test_read_your_writes_across_clients(connect):
    spec = spec_of()
    writer, reader = connect(), connect()
    ns = writer.register(spec)
    assert reader.register(spec) == ns
    for i in range(30):
        toks = tokens_for(100 + i, 2)
        blocks = blocks_for(toks, spec)
        assert writer.put(ns, toks, blocks) == 32
        assert reader.lookup(ns, toks) == 32  # visible as soon as put returned
        n, got = reader.get(ns, toks)
        assert n == 32 and joined(got) == joined(blocks)


def test_many_concurrent_clients(connect, carrier):
    spec = spec_of()
    nclients, rounds = (4, 5) if carrier == "ucx" else (8, 10)
    errors = []
    shared = tokens_for(500, 3)
    shared_blocks = blocks_for(shared, spec)

    def work(k: int) -> None:
        try:
            c = connect()
            ns = c.register(spec)
            for r in range(rounds):
                toks = tokens_for(1000 * k + r, 2)
                blocks = blocks_for(toks, spec)
                assert c.put(ns, toks, blocks) == 32
                n, got = c.get(ns, toks)
                assert n == 32 and joined(got) == joined(blocks)
                c.put(ns, shared, shared_blocks)
                n, got = c.get(ns, shared)
                assert n == 48 and joined(got) == joined(shared_blocks)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]


def test_asyncio_twins(connect):
    spec = spec_of()
    c = connect()

    async def main():
        ns = await c.aregister(spec)
        toks = tokens_for(7, 3)
        blocks = blocks_for(toks, spec)
        assert await c.alookup(ns, toks) == 0
        # several in flight at once from one event loop
        results = await asyncio.gather(c.aput(ns, toks, blocks), c.alookup(ns, toks[:16]))
        assert results[0] == 48
        n, got = await c.aget(ns, toks)
        assert n == 48 and joined(got) == joined(blocks)
        assert await c.adelete(ns, toks) >= 1
        await c.aflush()
        assert (await c.astats()).tiers

    asyncio.run(main())


def test_asyncio_receive_that_fails_drops_the_connection(connect, carrier):
    """A caller whose ``alloc`` raises mid-reply (not a KVStoreError) leaves the stream
    position unknown: the connection is dropped, and the next request works."""
    if carrier == "shm":
        pytest.skip("shm replies carry no payload (leases)")
    spec = spec_of()
    c = connect()

    def refuse(nbytes):
        raise ValueError("no room here")

    async def main():
        ns = await c.aregister(spec)
        toks = tokens_for(8, 3)
        blocks = blocks_for(toks, spec)
        assert await c.aput(ns, toks, blocks) == 48
        with pytest.raises(ValueError):
            await c.aget_into(ns, toks, refuse)
        assert c.aops.conn.channel is None  # dropped, not left mid-frame
        n, got = await c.aget(ns, toks)
        assert n == 48 and joined(got) == joined(blocks)

    asyncio.run(main())


def test_get_into_a_tensor(connect):
    spec = spec_of()
    c = connect()
    ns = c.register(spec)
    toks = tokens_for(8, 2)
    kv = torch.randn(spec.layout.kv_shape(32), dtype=torch.float16)
    blocks = [kv[:, :, i * 16 : (i + 1) * 16].contiguous().view(torch.uint8).numpy().reshape(-1)
              for i in range(2)]
    assert c.put(ns, toks, blocks) == 32
    out = torch.empty(2 * spec.block_bytes, dtype=torch.uint8)
    n, buf = c.get_into(ns, toks, alloc=lambda nbytes: out[:nbytes].numpy())
    assert n == 32
    assert bytes(out.numpy()) == joined(blocks)


def test_tenants_are_isolated(connect):
    a = connect(tenant="alice")
    b = connect(tenant="bob")
    spec = spec_of()
    ns_a, ns_b = a.register(spec), b.register(spec)
    assert ns_a != ns_b  # the tenant is part of the namespace
    toks = tokens_for(20, 2)
    assert a.put(ns_a, toks, blocks_for(toks, spec)) == 32
    assert b.lookup(ns_b, toks) == 0
    assert b.get(ns_b, toks) == (0, [])
    with pytest.raises(NotFound):  # bob cannot address alice's namespace
        b._run(b.ops.lookup(ns_a, toks))
    with pytest.raises(Unauthorized):
        b.register(spec_of(tenant="alice"))


def test_wrong_layout_is_refused(connect):
    spec = spec_of()
    c = connect()
    ns = c.register(spec)
    toks = tokens_for(30, 1)
    with pytest.raises(InvalidArgument):
        c.put(ns, toks, [np.zeros(spec.block_bytes - 1, np.uint8)])
    with pytest.raises(InvalidArgument):
        c.put(ns, toks, [np.zeros(spec.block_bytes, np.uint8)] * 2)  # 2 blocks, 1 block of tokens
    assert c.lookup(ns, toks) == 0
    assert c.put(ns, toks, blocks_for(toks, spec)) == 16  # the connection still works


def test_reconnect_after_drop(connect, store):
    spec = spec_of()
    c = connect()
    ns = c.register(spec)
    toks = tokens_for(40, 2)
    blocks = blocks_for(toks, spec)
    assert c.put(ns, toks, blocks) == 32
    gen = c.conn.generation
    c._run(_drop(c))  # the connection dies under the client
    n, got = c.get(ns, toks)  # reconnects, re-registers, reads correct data
    assert n == 32 and joined(got) == joined(blocks)
    assert c.conn.generation == gen + 1
    assert eventually(lambda: not store.lease_count)  # shm releases without waiting


async def _drop(client):
    client.conn._drop()


def test_leases_released_when_connection_closes(daemon, connect, store, carrier):
    if carrier != "shm":
        pytest.skip("leases are an shm carrier op")
    from kvstore.transport.messages import Op

    spec = spec_of()
    c = connect()
    ns = c.register(spec)
    toks = tokens_for(50, 2)
    c.put(ns, toks, blocks_for(toks, spec))

    async def hold():
        args = {"tokens": toks.tobytes()}
        await c.conn.request(Op.LEASE, ns, {**args, "mode": "read"})
        await c.conn.request(Op.LEASE, ns, {"tokens": tokens_for(51, 2).tobytes(), "mode": "write"})

    c._run(hold())
    assert store.lease_count == 2
    c._run(_drop(c))
    assert eventually(lambda: not store.lease_count)
    assert c.lookup(ns, tokens_for(51, 2)) == 0  # the uncommitted write lease left nothing


def test_stats_and_flush(connect):
    c = connect(tenant="t1")
    other = connect(tenant="t2")
    spec = spec_of()
    ns = c.register(spec)
    other.register(spec)
    toks = tokens_for(60, 2)
    c.put(ns, toks, blocks_for(toks, spec))
    c.flush()
    stats = c.stats()
    assert isinstance(stats, StoreStats)
    assert stats.tiers[0].name in ("cpu", "gpu") and stats.tiers[0].blocks >= 2
    assert {n.spec.tenant for n in stats.namespaces} == {"t1"}
    assert stats.server.connections >= 2


def test_auth_token(store, carrier, sockdir):
    auth = TokenAuth.from_text("alice:s3cret\nbob:hunter2\n")
    with ServerThread(store, [listen_url(carrier, sockdir)], auth=auth) as srv:
        url = srv.urls[0]
        spec = spec_of()
        good = RemoteStore.connect(url, token="s3cret", tenant="alice", strict=True)
        ns = good.register(spec)
        assert good.lookup(ns, tokens_for(1, 1)) == 0
        for token, tenant in ((None, "alice"), ("wrong", "alice"), ("s3cret", "bob")):
            bad = RemoteStore.connect(url, token=token, tenant=tenant, strict=True, timeout=5)
            with pytest.raises(Unauthorized):
                bad.ping()
            bad.close()
        assert good.lookup(ns, tokens_for(1, 1)) == 0
        good.close()


def test_unreachable_daemon_misses_unless_strict(sockdir, carrier):
    url = {"tcp": "tcp://127.0.0.1:9", "shm": f"shm://{sockdir}/nobody.sock",
           "ucx": "ucx://127.0.0.1:9"}[carrier]
    spec = spec_of()
    soft = RemoteStore.connect(url, connect_timeout=2, retry_interval=0.05)
    ns = soft.register(spec)  # offline registration: registered on connect
    toks = tokens_for(70, 2)
    assert soft.lookup(ns, toks) == 0
    assert soft.get(ns, toks) == (0, [])
    assert soft.get_into(ns, toks) == (0, None)
    assert soft.put(ns, toks, blocks_for(toks, spec)) == 0
    strict = RemoteStore.connect(url, strict=True, connect_timeout=2)
    with pytest.raises(Unavailable):
        strict.lookup(ns, toks)
    soft.close()
    strict.close()


def test_daemon_restart_on_the_same_url(store, carrier, sockdir):
    spec = spec_of()
    srv = ServerThread(store, [listen_url(carrier, sockdir)]).start()
    url = srv.urls[0]
    c = RemoteStore.connect(url, retry_interval=0.05, timeout=5)
    ns = c.register(spec)
    toks = tokens_for(80, 2)
    blocks = blocks_for(toks, spec)
    assert c.put(ns, toks, blocks) == 32
    srv.stop()
    assert c.lookup(ns, toks) == 0  # down: a miss, not an error
    with ServerThread(store, [url]):
        deadline = time.monotonic() + 5
        while c.lookup(ns, toks) != 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        n, got = c.get(ns, toks)
        assert n == 32 and joined(got) == joined(blocks)
    c.close()


def test_server_counts_connections(daemon, connect):
    c = connect()
    c.ping()
    assert daemon.dispatcher.connections >= 1
    c.close()
    assert eventually(lambda: daemon.dispatcher.connections == 0)


@pytest.mark.parametrize("workers", [16, 0], ids=["bulk-threads", "all-busy"])
def test_big_blocks_bulk_paths(connect, store, monkeypatch, workers):
    """2 MiB blocks: bulk transfers on worker threads (or, all workers busy, on the
    loop), a re-put whose cached blocks are dropped into scratch, and a request
    cancelled by its timeout mid-transfer."""
    from kvstore.layout import KVLayout
    from kvstore.namespace_spec import NamespaceSpec
    from kvstore.transport import bulk

    monkeypatch.setattr(bulk, "BULK_THREADS", workers)

    spec = NamespaceSpec(KVLayout("big", 2, 8, 128, "float16", 256))
    c = connect()
    ns = c.register(spec)
    toks = tokens_for(90, 6, block_tokens=256)
    blocks = [np.full(spec.block_bytes, i + 1, np.uint8) for i in range(6)]
    assert c.put(ns, toks[: 3 * 256], blocks[:3]) == 768
    assert c.put(ns, toks, blocks) == 6 * 256  # 3 cached blocks travel and are dropped
    n, buf = c.get_into(ns, toks)
    assert n == 6 * 256 and bytes(buf) == joined(blocks)
    hasty = connect(timeout=0.001, strict=True)
    hasty.register(spec)
    for _ in range(3):
        try:
            hasty.get_into(ns, toks)
        except Exception:  # a Timeout (or a miss): the connection is dropped, not stuck
            pass
    assert eventually(lambda: not store.lease_count)
    n, buf = c.get_into(ns, toks)
    assert n == 6 * 256 and bytes(buf) == joined(blocks)
