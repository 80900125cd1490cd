"""TieredStore with the CPU tier only: the BlockStore contract, eviction, leases."""

import threading

import numpy as np
import pytest

from kvstore.errors import InvalidArgument, LayoutMismatch, NotFound
from kvstore.namespace_spec import NamespaceSpec

from .helpers import make_spec, payloads_for, shm_files


def test_put_get_lookup_round_trip(store_factory, spec):
    s = store_factory()
    ns = s.register(spec)
    assert s.register(spec) == ns and s.namespaces() == [spec]
    toks = np.arange(22, dtype=np.uint32)  # 5 whole blocks + a partial tail
    p = payloads_for(ns, spec, toks)
    assert s.lookup(ns, toks) == 0 and s.get(ns, toks) == (0, [])
    assert s.put(ns, toks, p) == 20
    assert s.lookup(ns, toks) == 20 and s.lookup(ns, toks[:9]) == 8
    n, got = s.get(ns, list(toks[:13]))
    assert n == 12 and got == p[:3]
    sizes = []

    def alloc(nbytes):
        sizes.append(nbytes)
        return bytearray(nbytes)

    n, buf = s.get_into(ns, toks, alloc)
    assert n == 20 and bytes(buf) == b"".join(p) and sizes == [5 * spec.block_bytes]
    assert s.get_into(ns, list(range(500, 508)), alloc) == (0, None) and len(sizes) == 1
    assert s.put(ns, toks, p[:2]) == 20  # read-your-writes: what is cached
    s.check()


def test_put_skips_cached_blocks_and_validates(store_factory, spec):
    s = store_factory()
    ns = s.register(spec)
    toks = list(range(12))
    p = payloads_for(ns, spec, toks)
    s.put(ns, toks[:8], p[:2])

    class Guard(list):
        def __getitem__(self, i):
            assert i >= 2, "cached block re-read"
            return list.__getitem__(self, i)

    assert s.put(ns, toks, Guard(p)) == 12
    with pytest.raises(InvalidArgument):
        s.put(ns, list(range(100, 108)), [b"x" * 3, b"y" * 3])
    assert s.lookup(ns, list(range(100, 108))) == 0  # nothing half-written is visible
    with pytest.raises(NotFound):
        s.lookup(b"\0" * 16, toks)
    s.check()


def test_fingerprint_clash_is_a_layout_mismatch(store_factory, spec):
    s = store_factory()
    s.register(spec)
    other = NamespaceSpec(spec.layout, spec.codec, spec.tenant, spec.block_bytes + 2)
    with pytest.raises(LayoutMismatch):
        s.register(other)


def test_extra_separates_prefixes(store_factory, spec):
    s = store_factory()
    ns = s.register(spec)
    toks = list(range(8))
    s.put(ns, toks, payloads_for(ns, spec, toks, b"lora1"), extra=b"lora1")
    assert s.lookup(ns, toks) == 0 and s.lookup(ns, toks, extra=b"lora1") == 8
    assert s.get(ns, toks, extra=b"lora1")[1] == payloads_for(ns, spec, toks, b"lora1")


def test_eviction_without_ssd_drops_leaf_tails_only(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096)  # 128 blocks of 512 B
    ns = s.register(spec)
    prompts = [list(range(i * 1000, i * 1000 + 40)) for i in range(40)]  # 10 blocks each
    for t in prompts:
        s.put(ns, t, payloads_for(ns, spec, t))
        s.check()
    cpu = s.tier_stats("cpu")
    assert cpu.evictions > 0 and cpu.used_bytes <= cpu.capacity_bytes
    for t in prompts:  # every cached prefix is whole: blocks 0..n-1, bytes intact
        n, got = s.get(ns, t)
        assert got == payloads_for(ns, spec, t)[: n // 4]
    assert s.get(ns, prompts[-1])[0] == 40  # the most recent survived


def test_read_lease_pins_blocks_under_pressure(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096)
    ns = s.register(spec)
    keep = list(range(40))
    pk = payloads_for(ns, spec, keep)
    s.put(ns, keep, pk)
    lease = s.lease_read(ns, keep)
    assert lease.num_tokens == 40 and len(lease.slots) == 10 and not lease.writable
    for i in range(1, 60):
        t = list(range(i * 1000, i * 1000 + 40))
        s.put(ns, t, payloads_for(ns, spec, t))
    assert [bytes(s.read_slot(sl)) for sl in lease.slots] == pk
    assert s.lookup(ns, keep) == 40
    s.release(lease.lease_id)
    s.release(lease.lease_id)  # idempotent
    for i in range(60, 120):
        t = list(range(i * 1000, i * 1000 + 40))
        s.put(ns, t, payloads_for(ns, spec, t))
    assert s.lookup(ns, keep) < 40  # released: it could go, and did
    s.check()


def test_put_fails_softly_when_everything_is_pinned(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096)
    ns = s.register(spec)
    leases = []
    for i in range(16):
        t = list(range(i * 1000, i * 1000 + 32))
        s.put(ns, t, payloads_for(ns, spec, t))
        leases.append(s.lease_read(ns, t))
    t = list(range(99000, 99016))
    assert s.put(ns, t, payloads_for(ns, spec, t)) == 0  # no room, nothing evictable
    for lease in leases:
        s.release(lease.lease_id)
    assert s.put(ns, t, payloads_for(ns, spec, t)) == 16
    s.check()


def test_write_lease_commit_and_abort(store_factory, spec):
    s = store_factory()
    ns = s.register(spec)
    toks = list(range(16))
    p = payloads_for(ns, spec, toks)
    s.put(ns, toks[:4], p[:1])
    lease = s.lease_write(ns, toks + [1, 2])  # partial tail ignored
    assert lease.writable and lease.first_block == 1 and len(lease.slots) == 3
    assert lease.num_tokens == 16
    for slot, data in zip(lease.slots, p[1:]):
        s.read_slot(slot)[:] = data
    assert s.lookup(ns, toks) == 4  # invisible until committed
    assert s.commit_lease(lease.lease_id) == 16
    assert s.get(ns, toks)[1] == p
    with pytest.raises(NotFound):
        s.commit_lease(lease.lease_id)
    aborted = s.lease_write(ns, list(range(50, 58)))
    used = s.tier_stats("cpu").used_bytes
    s.release(aborted.lease_id)
    assert s.tier_stats("cpu").used_bytes == used - 2 * spec.block_bytes
    assert s.lookup(ns, list(range(50, 58))) == 0
    read = s.lease_read(ns, toks)
    with pytest.raises(InvalidArgument):
        s.commit_lease(read.lease_id)
    s.release(read.lease_id)
    s.check()


def test_delete_drops_prefix_and_extensions_but_not_leased(store_factory, spec):
    s = store_factory()
    ns = s.register(spec)
    a, b = list(range(16)), list(range(8)) + [900 + i for i in range(8)]
    s.put(ns, a, payloads_for(ns, spec, a))
    s.put(ns, b, payloads_for(ns, spec, b))
    assert s.delete(ns, a[:4]) == 6  # root block and every extension: 2 + 2 + 2 blocks
    assert s.lookup(ns, a) == 0 and s.lookup(ns, b) == 0
    s.put(ns, a[:8], payloads_for(ns, spec, a[:8]))  # two nodes: a[:8] and its extension
    s.put(ns, a, payloads_for(ns, spec, a))
    lease = s.lease_read(ns, a[:8])  # pins a[:8]'s node (leases pin whole tree nodes)
    assert s.delete(ns, a) == 2  # the leased first two blocks stay
    assert s.lookup(ns, a) == 8
    s.release(lease.lease_id)
    assert s.delete(ns, a) == 2
    assert s.tier_stats("cpu").used_bytes == 0
    s.check()


def test_namespaces_of_different_block_sizes_share_pages(store_factory):
    s = store_factory(cpu_bytes=32 * 4096)
    small, big = make_spec(model="small"), make_spec(model="big", layers=6)  # 512 B, 1536 B
    ns1, ns2 = s.register(small), s.register(big)
    for round_ in range(6):
        for ns, spec in ((ns1, small), (ns2, big)):
            for i in range(30):
                t = [round_ * 100000 + i * 100 + j for j in range(16)]
                assert s.put(ns, t, payloads_for(ns, spec, t)) == 16
                assert s.get(ns, t)[1] == payloads_for(ns, spec, t)
            s.check()
    assert s.tier_stats("cpu").used_bytes <= 32 * 4096


def test_concurrent_puts_and_gets_never_return_wrong_bytes(store_factory, spec):
    s = store_factory(cpu_bytes=16 * 4096)
    ns = s.register(spec)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                t = [int(x) for x in rng.integers(0, 3, 8)] + list(range(int(rng.integers(0, 8)) * 4))
                if rng.random() < 0.5:
                    s.put(ns, t, payloads_for(ns, spec, t))
                else:
                    n, got = s.get(ns, t)
                    assert got == payloads_for(ns, spec, t)[: n // 4]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    s.check()


def test_close_removes_the_arena(store_factory, spec):
    before = shm_files()
    s = store_factory()
    path = s.arena().path
    assert s.arena().size == 64 << 10
    s.close()
    s.close()
    assert shm_files() == before - {path.rsplit("/", 1)[1]}
    with pytest.raises(InvalidArgument):
        s.put(b"x" * 16, [1], [])
