"""put_paged / get_paged: store blocks straight between a vLLM CPU cache and a namespace.

Both backend paths: the embedded store's zero-copy leases (packed into and
unpacked out of arena slots) and a carrier-style backend without leases
(payloads handed to put, received from get). Caches are read with the tests'
own map of vLLM's layouts, not the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvstore.client import KVClient, paged_io, transfer
from kvstore.kernels import CODECS, EngineKind, EngineLayout
from kvstore.layout import KVLayout
from kvstore.store_api import Capabilities
from tests.kernels.engine_caches import build_cache, read_cache, tokens

L, H, D, BS, BT, NB = 2, 2, 64, 32, 96, 24  # a store block spans 3 engine blocks


class NoLeases:
    """The embedded store seen as a carrier that only has put/get (as tcp)."""

    capabilities = Capabilities(leases=False)

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name.startswith("lease") or name in ("read_slot", "commit_lease"):
            raise AttributeError(name)
        return getattr(self._store, name)


@pytest.fixture(params=["zero_copy", "put_get"])
def client(request):
    with KVClient.connect("embedded", cpu_bytes="64MiB") as c:
        if request.param == "put_get":
            c.backend = NoLeases(c.backend)
        yield c


def _engine(kind):
    return EngineLayout(kind, BS)


def _caches(kind, dtype, seed):
    return [build_cache(kind, k, v) for k, v in tokens(L, NB, BS, H, D, dtype, seed)]


def _canonical(kind, caches, blocks):
    """[L, 2, len(blocks) * BS, H, D] of engine blocks ``blocks``."""
    layers = [read_cache(kind, c) for c in caches]
    return torch.stack([torch.stack([k[blocks].flatten(0, 1), v[blocks].flatten(0, 1)])
                        for k, v in layers])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", [EngineKind.VLLM_CPU, EngineKind.VLLM_CPU_AMX])
def test_put_then_get_into_other_blocks(client, kind, codec):
    ns = client.namespace(KVLayout("io", L, H, D, "bfloat16", BT), codec=codec)
    src = _caches(kind, torch.bfloat16, seed=1)
    toks = np.arange(2 * BT + 10, dtype=np.uint32)
    blocks = [5, 9, 1, 20, 3, 7, 11]  # 2 whole store blocks (+ a partial engine block)
    assert paged_io.put_paged(ns, toks, src, blocks, _engine(kind)) == 2 * BT
    n, kv = ns.get(toks)  # what the store holds, decoded by the namespace
    assert n == 2 * BT
    if codec == "none":
        assert torch.equal(kv, _canonical(kind, src, blocks[:6]))

    dst = _caches(kind, torch.bfloat16, seed=2)
    before = [c.clone() for c in dst]
    targets = [0, 2, 4, 6, 8, 10, 12]
    skip = BS  # the engine holds block 0 already: left alone
    got = paged_io.get_paged(ns, toks, dst, targets, _engine(kind), skip=skip)
    assert got == 2 * BT
    loaded = _canonical(kind, dst, targets[1:6])
    assert torch.equal(loaded, kv[:, :, skip:])
    untouched = [b for b in range(NB) if b not in targets[1:6]]
    for a, b in zip(dst, before):
        assert torch.equal(a[untouched].view(torch.uint8), b[untouched].view(torch.uint8))


def test_only_missing_blocks_are_packed(client, monkeypatch):
    ns = client.namespace(KVLayout("io", L, H, D, "float32", BT), codec="int8")
    kind = EngineKind.VLLM_CPU
    src = _caches(kind, torch.float32, seed=3)
    toks = np.arange(3 * BT, dtype=np.uint32)
    blocks = list(range(9))
    assert paged_io.put_paged(ns, toks[:BT], src, blocks[:3], _engine(kind)) == BT
    packed = []
    real = paged_io.pack_paged
    for module in (paged_io, transfer):  # the carrier path and the lease path
        monkeypatch.setattr(module, "pack_paged",
                            lambda caches, ids, *a, **k: packed.append([int(i) for i in ids])
                            or real(caches, ids, *a, **k))
    assert paged_io.put_paged(ns, toks, src, blocks, _engine(kind)) == 3 * BT
    assert packed == [blocks[3:]]  # one call, the two new store blocks only
    assert paged_io.put_paged(ns, toks, src, blocks, _engine(kind)) == 3 * BT


def test_partial_hits_and_misses(client):
    ns = client.namespace(KVLayout("io", L, H, D, "float32", BT))
    kind = EngineKind.VLLM_CPU
    src = _caches(kind, torch.float32, seed=4)
    toks = np.arange(3 * BT, dtype=np.uint32)
    paged_io.put_paged(ns, toks[:BT], src, [1, 2, 3], _engine(kind))
    dst = [torch.zeros_like(c) for c in src]
    assert paged_io.get_paged(ns, toks + 1, dst, list(range(9)), _engine(kind)) == 0
    assert not any(c.any() for c in dst)
    assert paged_io.get_paged(ns, toks, dst, list(range(4, 13)), _engine(kind)) == BT
    assert torch.equal(_canonical(kind, dst, [4, 5, 6]), _canonical(kind, src, [1, 2, 3]))
    assert not any(c[7:].any() for c in dst)  # the blocks of the missing tokens
    with pytest.raises(Exception, match="multiple"):
        paged_io.get_paged(ns, toks, dst, list(range(9)), _engine(kind), skip=5)


@pytest.mark.parametrize("carrier", ["shm", "tcp"])
def test_over_a_daemon(carrier, tmp_path):
    """shm: packed into / unpacked out of the daemon's arena under leases; tcp:
    payloads over the socket. Same blocks either way."""
    from kvstore.store.config import StoreConfig
    from kvstore.store.tiered_store import TieredStore
    from kvstore.transport.server import ServerThread

    store = TieredStore(StoreConfig(cpu_bytes="64MiB"))
    url = f"shm://{tmp_path}/kv.sock" if carrier == "shm" else "tcp://127.0.0.1:0"
    srv = ServerThread(store, [url]).start()
    try:
        with KVClient.connect(srv.urls[0], timeout=10) as c:
            kind = EngineKind.VLLM_CPU
            ns = c.namespace(KVLayout("io", L, H, D, "float16", BT), codec="int8")
            assert ns.uses_leases == (carrier == "shm")
            src = _caches(kind, torch.float16, seed=5)
            toks = np.arange(2 * BT, dtype=np.uint32)
            assert paged_io.put_paged(ns, toks, src, [3, 1, 4, 15, 9, 2], _engine(kind)) == 2 * BT
            n, kv = ns.get(toks)
            dst = [torch.zeros_like(cache) for cache in src]
            assert paged_io.get_paged(ns, toks, dst, [0, 5, 6, 7, 8, 10], _engine(kind)) == n
            assert n == 2 * BT and torch.equal(_canonical(kind, dst, [0, 5, 6, 7, 8, 10]), kv)
    finally:
        srv.stop()
        store.close()


@pytest.mark.parametrize("carrier", ["shm", "tcp"])
def test_an_unreachable_daemon_is_a_miss_unless_strict(carrier, tmp_path):
    """strict=False: put_paged stores nothing (0) and get_paged finds nothing, as
    Namespace.put / get; strict=True: both raise Unavailable."""
    from kvstore.errors import Unavailable
    from kvstore.store.config import StoreConfig
    from kvstore.store.tiered_store import TieredStore
    from kvstore.transport.server import ServerThread

    store = TieredStore(StoreConfig(cpu_bytes="64MiB"))
    url = f"shm://{tmp_path}/kv.sock" if carrier == "shm" else "tcp://127.0.0.1:0"
    srv = ServerThread(store, [url]).start()
    url = srv.urls[0]
    kind, lay = EngineKind.VLLM_CPU, KVLayout("io", L, H, D, "float16", BT)
    src = _caches(kind, torch.float16, seed=7)
    toks, ids = np.arange(2 * BT, dtype=np.uint32), [3, 1, 4, 15, 9, 2]
    soft = KVClient.connect(url, timeout=5, connect_timeout=1, retry_interval=0.05)
    strict = KVClient.connect(url, strict=True, timeout=5, connect_timeout=1, retry_interval=0.05)
    try:
        ns, strict_ns = soft.namespace(lay), strict.namespace(lay)
        assert paged_io.put_paged(ns, toks, src, ids, _engine(kind)) == 2 * BT  # reachable
        srv.stop()
        store.close()
        dst = [torch.zeros_like(cache) for cache in src]
        assert paged_io.put_paged(ns, toks, src, ids, _engine(kind)) == 0
        assert paged_io.get_paged(ns, toks, dst, ids, _engine(kind)) == 0
        assert all(not cache.any() for cache in dst)
        with pytest.raises(Unavailable):
            paged_io.put_paged(strict_ns, toks, src, ids, _engine(kind))
        with pytest.raises(Unavailable):
            paged_io.get_paged(strict_ns, toks, dst, ids, _engine(kind))
    finally:
        soft.close()
        strict.close()
        srv.stop()
        store.close()


FLASH_KINDS = [EngineKind.VLLM_FLASH, "vllm_flash_hnd"]


@pytest.mark.parametrize("device_memory", [False, True], ids=["host", "staged"])
@pytest.mark.parametrize("codec", ["none", "fp8_e4m3"])
@pytest.mark.parametrize("kind", FLASH_KINDS)
@pytest.mark.parametrize("carrier", ["embedded", "shm", "tcp"])
def test_flash_caches_over_every_carrier(carrier, kind, codec, device_memory, tmp_path):
    """vLLM flash caches (NHD and HND strides) on the CPU through the embedded store, shm
    and tcp, byte for byte; ``staged`` runs the device path (payloads staged in "device"
    buffers, one counted copy per block each way) on CPU tensors."""
    from kvstore.kernels.streams import HostTimeline
    from kvstore.store.config import StoreConfig
    from kvstore.store.tiered_store import TieredStore
    from kvstore.transport.server import ServerThread
    from tests.kernels.engine_caches import engine_of

    store = TieredStore(StoreConfig(cpu_bytes="64MiB"))
    srv = None
    if carrier != "embedded":
        url = f"shm://{tmp_path}/kv.sock" if carrier == "shm" else "tcp://127.0.0.1:0"
        srv = ServerThread(store, [url]).start()
    c = KVClient.connect(srv.urls[0], timeout=10) if srv else KVClient.connect("embedded")
    if srv is None:
        c.backend.close()
        c.backend = store
    tl = HostTimeline(separate_memory=True) if device_memory else None
    try:
        engine = engine_of(kind, BS)
        ns = c.namespace(KVLayout("io", L, H, D, "bfloat16", BT), codec=codec)
        src = _caches(kind, torch.bfloat16, seed=8)
        toks = np.arange(2 * BT + 3, dtype=np.uint32)
        ids = [3, 1, 4, 15, 9, 2, 6]
        assert paged_io.put_paged(ns, toks, src, ids, engine, timeline=tl) == 2 * BT
        n, kv = ns.get(toks)
        if codec == "none":
            assert torch.equal(kv, _canonical(kind, src, ids[:6]))
        dst = _caches(kind, torch.bfloat16, seed=9)
        before = [x.clone() for x in dst]
        targets = [0, 5, 7, 8, 10, 11]
        assert paged_io.get_paged(ns, toks, dst, targets, engine, skip=BS, timeline=tl) == n
        assert torch.equal(_canonical(kind, dst, targets[1:]), kv[:, :, BS:])
        rest = [b for b in range(NB) if b not in targets[1:]]
        assert all(torch.equal(a[:, rest], b[:, rest]) for a, b in zip(dst, before))
        if tl is not None:
            copies = [op for op in tl.log if op.kind == "copy"]
            if carrier == "tcp":  # the whole put in one copy; every payload received once
                assert [op.label for op in copies] == ["d2h", "h2d", "h2d"]
            else:  # one copy per block into its arena slot, one out of it
                assert [op.label for op in copies] == ["d2h", "d2h", "h2d", "h2d"]
    finally:
        c.close()
        if srv:
            srv.stop()
        store.close()
