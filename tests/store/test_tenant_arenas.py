"""Per-tenant arenas, quotas and fair eviction in the store (in-process)."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time

import pytest

from kvstore.errors import NotFound, QuotaExceeded
from kvstore.store.config import StoreConfig
from kvstore.store.quotas import parse_quota_spec
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, payloads_for


def tenant_spec(tenant: str, **kw):
    return dataclasses.replace(make_spec(**kw), tenant=tenant)


@pytest.fixture
def store_of():
    stores = []

    def make(**kw):
        kw.setdefault("cpu_bytes", 64 << 10)
        kw.setdefault("cpu_page_bytes", 4096)
        s = TieredStore(StoreConfig(**kw))
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


def prompt(i: int, nblocks: int = 4) -> list[int]:
    return [i] + list(range(1000 * i + 1, 1000 * i + 4 * nblocks))


def test_each_tenant_has_its_own_sealed_memory_file(store_of):
    s = store_of()
    a, b = s.tenant_arena("alice"), s.tenant_arena("bob")
    assert a.fd != b.fd and (a.base, b.base) == (0, a.size)
    assert os.fstat(a.fd).st_ino != os.fstat(b.fd).st_ino
    seals = fcntl.fcntl(a.fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    with pytest.raises(OSError):
        os.ftruncate(a.fd, 0)  # a client holding the descriptor cannot pull the pages away
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    s.put(ns_a, prompt(1), payloads_for(ns_a, spec_a, prompt(1)))
    s.put(ns_b, prompt(2), payloads_for(ns_b, spec_b, prompt(2)))
    in_a = bytes(a.view)
    assert all(p in in_a for p in payloads_for(ns_a, spec_a, prompt(1)))
    assert not any(p in in_a for p in payloads_for(ns_b, spec_b, prompt(2)))
    s.check()


def test_a_tenant_at_its_quota_evicts_only_its_own_blocks(store_of):
    s = store_of(tenant_quotas={"bob": {"cpu": 16 << 10}})
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    for i in range(8):  # 8 x 4 x 512 B = 16 KiB for alice
        s.put(ns_a, prompt(i), payloads_for(ns_a, spec_a, prompt(i)))
    for i in range(100, 200):  # bob writes far past his 16 KiB
        s.put(ns_b, prompt(i), payloads_for(ns_b, spec_b, prompt(i)))
    assert s.tenant_usage()["bob"]["cpu_used"] <= 16 << 10
    for i in range(8):
        assert s.lookup(ns_a, prompt(i)) == 16
    s.check()


def test_uncommitted_write_leases_count_and_expire(store_of):
    s = store_of(write_lease_seconds=0.2)
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    for i in range(8):
        s.put(ns_a, prompt(i), payloads_for(ns_a, spec_a, prompt(i)))
    leases = []
    for i in range(100, 200):  # bob hogs with leases he never commits
        lease = s.lease_write(ns_b, prompt(i))
        leases.append(lease.lease_id)
        if not lease.slots:
            break
    assert s.tenant_usage()["bob"]["cpu_used"] > 0
    for i in range(8):  # alice (within her fair share) keeps every block
        assert s.lookup(ns_a, prompt(i)) == 16
    time.sleep(0.3)
    s.put(ns_a, prompt(50), payloads_for(ns_a, spec_a, prompt(50)))  # expires bob's leases
    assert s.expired_write_leases == len(leases)
    assert s.tenant_usage()["bob"]["cpu_used"] == 0
    with pytest.raises(NotFound, match="deadline"):
        s.commit_lease(leases[0])
    s.check()


def test_a_put_larger_than_the_quota_is_refused(store_of):
    s = store_of(tenant_cpu_bytes=4 << 10)
    spec = tenant_spec("carol")
    ns = s.register(spec)
    big = prompt(1, nblocks=16)  # 8 KiB
    with pytest.raises(QuotaExceeded, match="quota of 4096"):
        s.put(ns, big, payloads_for(ns, spec, big))
    assert s.lookup(ns, big) == 0
    s.set_quota("carol", cpu_bytes=16 << 10)
    assert s.put(ns, big, payloads_for(ns, spec, big)) == 64


def test_quota_spec_parses():
    assert parse_quota_spec("alice=cpu:1GiB,ssd:10GiB; bob=cpu:512MiB") == {
        "alice": {"cpu": 1 << 30, "ssd": 10 << 30}, "bob": {"cpu": 512 << 20}}


def test_a_tenant_holding_nothing_still_gets_its_fair_share(store_of):
    s = store_of()
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    for i in range(40):  # alice alone fills the whole tier (she is the only holder)
        s.put(ns_a, prompt(i), payloads_for(ns_a, spec_a, prompt(i)))
    assert s.tenant_usage()["alice"]["cpu_used"] == 64 << 10
    assert s.put(ns_b, prompt(100), payloads_for(ns_b, spec_b, prompt(100))) == 16
    assert s.lookup(ns_b, prompt(100)) == 16


def _count_discards(store, monkeypatch) -> list:
    calls = []
    for arena in store._cpu.allocator.arenas():
        original = arena.resident._discard
        monkeypatch.setattr(arena.resident, "_discard",
                            lambda off, n, original=original: (calls.append(n), original(off, n)))
    return calls


def test_one_tenant_at_steady_state_keeps_its_pages_warm(store_of, monkeypatch):
    s = store_of()
    spec = tenant_spec("alice")
    ns = s.register(spec)
    s.put(ns, prompt(0), payloads_for(ns, spec, prompt(0)))
    calls = _count_discards(s, monkeypatch)
    for i in range(1, 200):  # 200 x 2 KiB through a 64 KiB tier: evicting all along
        s.put(ns, prompt(i), payloads_for(ns, spec, prompt(i)))
        assert s._cpu.allocator.resident_bytes <= 64 << 10
    assert calls == []  # pages that empty are reused warm, never punched and refaulted
    assert s.lookup(ns, prompt(199)) == 16
    s.check()


def test_warm_pages_go_back_when_another_tenant_needs_the_memory(store_of, monkeypatch):
    s = store_of()
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    for i in range(40):  # alice fills the tier
        s.put(ns_a, prompt(i), payloads_for(ns_a, spec_a, prompt(i)))
    s.tenant_arena("bob")
    calls = _count_discards(s, monkeypatch)
    arenas = s._cpu.allocator
    for i in range(100, 140):  # bob takes his share: alice's emptied slabs must give memory back
        assert s.put(ns_b, prompt(i), payloads_for(ns_b, spec_b, prompt(i))) == 16
        # partial slabs aside (one page per tenant here), never more than the capacity
        assert arenas.resident_bytes <= arenas.capacity + 2 * arenas.page_bytes
    assert sum(calls) > 0
    assert s.tenant_usage()["bob"]["cpu_used"] == 32 << 10  # his fair share: half
    assert arenas.resident_bytes == sum(a.resident.nbytes for a in arenas.arenas())
    assert s.lookup(ns_b, prompt(139)) == 16
    s.check()
