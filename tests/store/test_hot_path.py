"""The store's hot path: one lock acquisition per call, batched SSD movement, and
promotion of SSD-only blocks in the background (never wrong bytes).

Lock acquisitions are counted by ``StoreLock.acquisitions()`` for the calling
thread only (the store's own threads take the lock meanwhile). SSD calls are
counted by ``CountingSSD`` (the real tier). Blocks are 4 KiB: one CPU page each.
"""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from kvstore.keys import block_keys
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from tests.store.counting_ssd import counting_ssd
from tests.store.helpers import make_spec, payloads_for
from tests.waiting import wait_until

BB = 4096
SPEC = make_spec(block_tokens=16, dim=16)  # 4 KiB blocks


def tokens(seed: int, nblocks: int) -> np.ndarray:
    return np.arange(nblocks * 16, dtype=np.uint32) + seed * 1_000_000


def cost(store: TieredStore, call) -> tuple[int, object]:
    """(store-lock acquisitions by this thread during ``call()``, its result)."""
    before = store._lock.acquisitions()
    out = call()
    return store._lock.acquisitions() - before, out


@pytest.fixture
def ssd_store(tmp_path, fs):
    """``make(cpu_blocks)``: a store over a CountingSSD (one writer thread, no write-behind)."""
    made, stores = [], []

    def make(cpu_blocks: int = 4, **kw):
        cfg = dict(cpu_bytes=cpu_blocks * BB, cpu_page_bytes=BB, ssd_bytes=16 << 20,
                   ssd_dir=str(tmp_path / "ssd"), segment_bytes=1 << 20, demotion_threads=1,
                   write_behind_seconds=0, ssd_factory=counting_ssd(fs, made))
        cfg.update(kw)
        store = TieredStore(StoreConfig(**cfg))
        stores.append(store)
        return store, store.register(SPEC), made[-1]

    yield make
    for tier in made:  # a failed test must not leave the promoter parked
        if tier.promoter_gate is not None:
            tier.promoter_gate.set()
    for s in stores:
        s.close()


def on_ssd_only(store, ns, t) -> None:
    """Push prefix ``t`` out of the CPU tier (demoted to SSD) by filling the tier."""
    cap = store.tier_stats("cpu").capacity_bytes // BB
    filler = tokens(999, cap)
    store.put(ns, filler, payloads_for(ns, SPEC, filler))
    store.wait_writes()
    assert store.tier_stats("cpu").used_bytes == cap * BB


# -- one lock acquisition per call ----------------------------------------------------------
@pytest.mark.unit
def test_put_get_and_leases_take_the_store_lock_once():
    with TieredStore(StoreConfig(cpu_bytes=64 * BB, cpu_page_bytes=BB)) as s:
        ns = s.register(SPEC)
        t = tokens(1, 4)
        data = payloads_for(ns, SPEC, t)
        assert cost(s, lambda: s.put(ns, t, data)) == (1, len(t))
        n, got = cost(s, lambda: s.get(ns, t))
        assert n == 1 and got == (len(t), data)  # the put's deferred commit ran first
        buf = bytearray(4 * BB)
        n, (ntok, out) = cost(s, lambda: s.get_into(ns, t, lambda nbytes: buf))
        assert n == 1 and ntok == len(t) and bytes(out) == b"".join(data)
        assert cost(s, lambda: s.lookup(ns, t)) == (1, len(t))
        t2 = tokens(2, 2)
        n, lease = cost(s, lambda: s.lease_write(ns, t2))
        assert n == 1 and len(lease.slots) == 2
        for slot, payload in zip(lease.slots, payloads_for(ns, SPEC, t2)):
            s.read_slot(slot)[:] = payload
        assert cost(s, lambda: s.commit_lease(lease.lease_id)) == (1, len(t2))
        n, lease = cost(s, lambda: s.lease_read(ns, t2))
        assert n == 1 and lease.num_tokens == len(t2)
        assert cost(s, lambda: s.release(lease.lease_id))[0] == 0  # deferred to the next holder
        assert s.lease_count == 0  # ...which ran it
        assert s.get(ns, t2) == (len(t2), payloads_for(ns, SPEC, t2))
        s.check()


@pytest.mark.unit
def test_ssd_reads_take_the_lock_once_for_a_get_and_twice_for_a_lease(ssd_store):
    s, ns, ssd = ssd_store(promote_on_get=False)
    t = tokens(1, 3)
    s.put(ns, t, payloads_for(ns, SPEC, t))
    on_ssd_only(s, ns, t)
    n, got = cost(s, lambda: s.get(ns, t))
    assert n == 1 and got == (len(t), payloads_for(ns, SPEC, t))
    n, lease = cost(s, lambda: s.lease_read(ns, t))  # read into lease slots outside the lock
    assert n == 2 and [bytes(s.read_slot(x)) for x in lease.slots] == payloads_for(ns, SPEC, t)
    s.release(lease.lease_id)
    s.check()


# -- batched movement to and from the SSD -----------------------------------------------
@pytest.mark.unit
def test_demotions_of_one_put_reach_the_ssd_in_one_write_many(ssd_store):
    s, ns, ssd = ssd_store(cpu_blocks=8)
    a, b = tokens(1, 8), tokens(2, 8)
    s.put(ns, a, payloads_for(ns, SPEC, a))
    s.put(ns, b, payloads_for(ns, SPEC, b))  # evicts all of a: eight staged demotions
    s.wait_writes()
    assert ssd.calls["write"] == 0
    assert ("write_many", 8) in ssd.items
    assert s.get(ns, a) == (len(a), payloads_for(ns, SPEC, a))


@pytest.mark.unit
def test_write_behind_and_flush_write_in_one_batch(ssd_store):
    s, ns, ssd = ssd_store(cpu_blocks=16)
    t = tokens(1, 6)
    s.put(ns, t, payloads_for(ns, SPEC, t))
    s.flush()
    assert ssd.calls["write"] == 0 and ssd.items == [("write_many", 6)]
    assert len(ssd) == 6


@pytest.mark.unit
def test_an_ssd_prefix_is_read_in_one_batch_and_promoted_in_another(ssd_store):
    s, ns, ssd = ssd_store()
    t = tokens(1, 4)
    s.put(ns, t, payloads_for(ns, SPEC, t))
    on_ssd_only(s, ns, t)
    ssd.items.clear()
    buf = bytearray(4 * BB)
    n, out = s.get_into(ns, t, lambda nbytes: buf)  # straight into the caller's buffer
    assert n == len(t) and bytes(out) == b"".join(payloads_for(ns, SPEC, t))
    assert ssd.items[0] == ("read_many_into", 4) and ssd.calls["read"] == 0
    assert wait_until(lambda: s.tier_stats("cpu").promotions == 4)
    assert ("read_many_into", 4) in ssd.items[1:]  # the promoter's own batch
    hits = s.tier_stats("cpu").hits
    assert s.get(ns, t) == (len(t), payloads_for(ns, SPEC, t))
    assert s.tier_stats("cpu").hits == hits + 4  # from memory now
    s.check()


# -- promotion in the background: never wrong bytes ---------------------------------------
@pytest.mark.unit
def test_a_block_replaced_during_its_promotion_keeps_its_new_bytes(ssd_store):
    s, ns, ssd = ssd_store()
    t = tokens(1, 2)
    old = payloads_for(ns, SPEC, t)
    s.put(ns, t, old)
    on_ssd_only(s, ns, t)
    ssd.promoter_gate = threading.Event()
    n, buf = s.get_into(ns, t, bytearray)  # the promoter reads the SSD itself
    assert n == len(t) and bytes(buf) == b"".join(old)
    assert ssd.promoter_parked.wait(10)  # slots allocated, the promoter's read parked
    assert s.delete(ns, t) == 2  # replaced meanwhile: deleted and put again, other bytes
    new = [bytes(255 - x for x in p) for p in old]
    s.put(ns, t, new)
    ssd.promoter_gate.set()
    assert wait_until(lambda: s._promoter.handled == 2)
    assert s.get(ns, t) == (len(t), new)
    assert s.tier_stats("cpu").promotions == 0  # the stale bytes were not installed
    s.check()


@pytest.mark.unit
def test_an_eviction_during_a_promotion_frees_its_slots(ssd_store):
    s, ns, ssd = ssd_store()
    t = tokens(1, 2)
    s.put(ns, t, payloads_for(ns, SPEC, t))
    on_ssd_only(s, ns, t)
    ssd.promoter_gate = threading.Event()
    assert s.get_into(ns, t, bytearray)[0] == len(t)
    assert ssd.promoter_parked.wait(10)  # two CPU slots taken for the promotion
    used = s.tier_stats("cpu").used_bytes
    assert s.evict(ns, t[:16]).blocks == 2  # the prefix and what extends it
    ssd.promoter_gate.set()
    assert wait_until(lambda: s._promoter.handled == 2)
    assert s.tier_stats("cpu").used_bytes == used - 2 * BB  # the slots went back
    assert s.lookup(ns, t) == 0 and s.tier_stats("cpu").promotions == 0
    s.check()


@pytest.mark.unit
@pytest.mark.parametrize("call", ["get", "get_into", "lease_read"])
def test_an_ssd_read_error_is_a_shorter_prefix_never_wrong_bytes(ssd_store, fs, call):
    s, ns, ssd = ssd_store(promote_on_get=False)
    t = tokens(1, 3)
    data = payloads_for(ns, SPEC, t)
    s.put(ns, t, data)
    on_ssd_only(s, ns, t)
    fs.inject("preadv", errno.EIO, after=1, times=None)  # the second block's read fails
    if call == "get":
        n, blocks = s.get(ns, t)
        assert n == 16 and blocks == data[:1]
    elif call == "get_into":
        n, buf = s.get_into(ns, t, bytearray)
        assert n == 16 and bytes(buf[:BB]) == data[0]
    else:
        lease = s.lease_read(ns, t)
        assert lease.num_tokens == 16 and bytes(s.read_slot(lease.slots[0])) == data[0]
        s.release(lease.lease_id)
    fs.clear()
    assert s.lookup(ns, t) == 16  # the failed block and what follows are gone
    keys = block_keys(t, 16)
    assert (ns, keys[0]) in ssd
    s.check()
