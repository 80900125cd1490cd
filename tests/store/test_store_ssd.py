"""TieredStore with the real SSD tier below the CPU tier (faults through ``FaultyFileSystem``).

Blocks here are 512 bytes and SSD records are 4 KiB aligned: the SSD tier
holds a block per 4 KiB (``SSD_BYTES``: room for every block of these tests).
"""

import errno
import logging
import time

import pytest

from kvstore.errors import StorageError
from kvstore.keys import block_keys
from kvstore.ssd.fs import FaultyFileSystem
from kvstore.ssd.tier import SSDTier
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, payloads_for, ssd_on, wait_for

SSD_BYTES = 4 << 20


def prompts(n, blocks=4, base=0):
    return [list(range(base + i * 1000, base + i * 1000 + 4 * blocks)) for i in range(n)]


def test_demotion_and_promotion(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)  # CPU holds 128 blocks
    ns = s.register(spec)
    ps = prompts(64)  # 256 blocks: half must be demoted
    for t in ps:
        assert s.put(ns, t, payloads_for(ns, spec, t)) == 16
    cpu = s.tier_stats("cpu")
    assert cpu.demotions >= 128 and cpu.used_bytes <= cpu.capacity_bytes
    # demoted blocks sit in the staging buffer until the background writer has
    # written them (a get serves them from there, no promotion needed): flush so
    # that every demoted block lives on the SSD only, and reads must promote
    s.flush()
    for t in ps:  # every block is still served, from one tier or the other
        assert s.lookup(ns, t) == 16
        assert s.get(ns, t)[1] == payloads_for(ns, spec, t)
    wait_for(lambda: s.tier_stats("cpu").promotions > 0)
    assert s.tier_stats("ssd").hits > 0
    s.check()


def test_a_resident_get_does_not_wait_for_the_disk(store_factory, spec, fs):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    hot = list(range(16))
    s.put(ns, hot, payloads_for(ns, spec, hot))
    fs.slow("pwritev", 0.5)  # a very slow disk
    for t in prompts(40, base=10**6):
        s.put(ns, t, payloads_for(ns, spec, t))
        s.get(ns, hot)  # keeps it hot
    t0 = time.perf_counter()
    assert s.get(ns, hot)[1] == payloads_for(ns, spec, hot)
    assert time.perf_counter() - t0 < 0.25
    fs.slow("pwritev", 0)


def test_flush_then_restart_serves_flushed_blocks(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    other = make_spec(model="other", layers=3)
    ns2 = s.register(other)
    ps = prompts(40)
    for t in ps:
        s.put(ns, t, payloads_for(ns, spec, t))
    t2 = list(range(7, 7 + 32))
    s.put(ns2, t2, payloads_for(ns2, other, t2, b"salt"), extra=b"salt")
    s.flush()
    stats = s.stats()  # nothing left dirty: every cached block has its SSD copy
    assert s.tier_stats("ssd").blocks == sum(n.blocks for n in stats.namespaces) == 168
    s.close()
    s2 = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    assert set(s2.namespaces()) == {spec, other}
    for t in ps:
        assert s2.get(ns, t) == (16, payloads_for(ns, spec, t))
    assert s2.get(ns2, t2, extra=b"salt") == (32, payloads_for(ns2, other, t2, b"salt"))
    assert s2.lookup(ns2, t2) == 0
    s2.check()


def test_unflushed_blocks_are_served_intact_or_missing_after_restart(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    ps = prompts(48)
    for t in ps[:10]:
        s.put(ns, t, payloads_for(ns, spec, t))
    s.flush()
    for t in ps[10:]:
        s.put(ns, t, payloads_for(ns, spec, t))
    s.close()  # no flush: what was demoted may be there, the rest is gone
    s2 = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    for i, t in enumerate(ps):
        n, got = s2.get(ns, t)
        assert got == payloads_for(ns, spec, t)[: n // 4]
        if i < 10:
            assert n == 16


def test_flush_is_write_through_for_resident_blocks(store_factory, spec, fs):
    s = store_factory(cpu_bytes=64 << 10, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    t = list(range(32))
    s.put(ns, t, payloads_for(ns, spec, t))
    assert s.tier_stats("ssd").blocks == 0  # write-back: nothing written yet
    fsyncs = fs.calls.get("fsync", 0)
    s.flush()
    written = s.tier_stats("ssd")
    assert written.blocks == 8 and written.bytes_in == 8 * spec.block_bytes
    assert fs.calls.get("fsync", 0) > fsyncs  # made durable
    s.flush()
    assert s.tier_stats("ssd").bytes_in == 8 * spec.block_bytes  # clean blocks: not written twice
    assert s.tier_stats("cpu").blocks == 8  # still resident


def test_degraded_ssd_leaves_the_cpu_tier_serving(store_factory, spec, fs, caplog):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    ps = prompts(64)
    for t in ps[:16]:
        s.put(ns, t, payloads_for(ns, spec, t))
    s.flush()
    fs.inject("pwritev", errno.ENOSPC, times=None)  # a full disk
    with caplog.at_level(logging.ERROR, logger="kvstore.ssd"):
        for t in ps[16:]:
            s.put(ns, t, payloads_for(ns, spec, t))
        wait_for(lambda: s.tier_stats("ssd").degraded)
    assert any("degraded" in r.message for r in caplog.records)
    with pytest.raises(StorageError):
        s.flush()
    # the most recent prompt is resident (checked first: reading the older,
    # flushed prompts below promotes them from SSD, which may evict it, and a
    # degraded tier cannot take the dirty blocks that eviction pushes out)
    assert s.get(ns, ps[-1])[0] == 16
    for t in ps:  # never wrong bytes
        n, got = s.get(ns, t)
        assert got == payloads_for(ns, spec, t)[: n // 4]
    for t in prompts(40, base=10**6):  # still takes puts, evicting leaf tails
        assert s.put(ns, t, payloads_for(ns, spec, t)) == 16
    s.check()


def test_failing_reads_become_misses(store_factory, spec, fs):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    ps = prompts(64)
    for t in ps:
        s.put(ns, t, payloads_for(ns, spec, t))
    s.flush()
    for op in ("pread", "preadv"):  # a failing disk: every read errs
        fs.inject(op, errno.EIO, times=None)
    for t in ps:
        n, got = s.get(ns, t)
        assert got == payloads_for(ns, spec, t)[: n // 4]
    assert s.lookup(ns, ps[0]) == 0  # SSD-only prefix dropped after the failed read
    s.check()


def test_ssd_capacity_evictions_forget_lost_copies(store_factory, spec):
    cap = 24 * 4096  # 6 segments of a header and 3 records: 18 blocks
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=cap, segment_bytes=4 * 4096)
    ns = s.register(spec)
    ps = prompts(80)
    for t in ps:
        s.put(ns, t, payloads_for(ns, spec, t))
        assert s.tier_stats("ssd").used_bytes <= cap
    s.wait_writes()
    assert s.tier_stats("ssd").evictions > 0
    for t in ps:
        n, got = s.get(ns, t)
        assert got == payloads_for(ns, spec, t)[: n // 4]
    s.check()


def test_read_lease_promotes_from_ssd(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES)
    ns = s.register(spec)
    ps = prompts(64)
    for t in ps:
        s.put(ns, t, payloads_for(ns, spec, t))
    lease = s.lease_read(ns, ps[0])  # long demoted
    assert lease.num_tokens == 16
    assert [bytes(s.read_slot(x)) for x in lease.slots] == payloads_for(ns, spec, ps[0])
    s.release(lease.lease_id)
    s.check()


def test_restart_drops_orphans_and_unknown_namespaces(tmp_path, spec):
    cfg = dict(cpu_bytes=16 * 4096, ssd_bytes=SSD_BYTES, ssd_dir=str(tmp_path),
               segment_bytes=64 << 10, ssd_factory=ssd_on(FaultyFileSystem()))
    t = list(range(16))
    with TieredStore(StoreConfig(**cfg)) as s:
        ns = s.register(spec)
        s.put(ns, t, payloads_for(ns, spec, t))
        s.flush()
    keys = block_keys(t, spec.block_tokens)
    with SSDTier(tmp_path, SSD_BYTES, segment_bytes=64 << 10) as disk:
        disk.remove(ns, keys[1])  # block 1 lost: blocks 2, 3 are orphans
    with TieredStore(StoreConfig(**cfg)) as s2:
        assert s2.get(ns, t) == (4, payloads_for(ns, spec, t)[:1])
        wait_for(lambda: s2.tier_stats("cpu").promotions == 1)  # the hit is back in CPU
        s2.wait_writes()  # the orphans' removal
    with SSDTier(tmp_path, SSD_BYTES, segment_bytes=64 << 10) as disk:
        disk.recover()
        assert set(disk.keys()) == {(ns, keys[0])}
