"""Operator controls of a real TieredStore: read-only, pins with a budget, evict, policies at run time."""

from __future__ import annotations

import threading

import pytest

from kvstore.errors import CapacityError, Draining, InvalidArgument, NotFound
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from tests.admin.helpers import payloads, policy_factory, small_spec, tokens_for


@pytest.fixture
def store():
    s = TieredStore(StoreConfig(cpu_bytes=64 << 10, policy_factory=policy_factory))
    yield s
    s.close()


def put(store, ns, spec, seed, nblocks):
    tokens = tokens_for(seed, nblocks)
    assert store.put(ns, tokens, payloads(spec, tokens)) == len(tokens)
    return tokens


def fill(store, ns, spec, first_seed, count):
    """Puts ``count`` two-block prompts: far more than 64 KiB of 512-byte blocks."""
    for seed in range(first_seed, first_seed + count):
        put(store, ns, spec, seed, 2)


def test_read_only_refuses_writes_and_keeps_reads(store):
    spec = small_spec()
    ns = store.register(spec)
    tokens = put(store, ns, spec, 1, 3)
    store.set_read_only(True)
    assert store.read_only
    with pytest.raises(Draining):
        store.put(ns, tokens_for(2, 2), payloads(spec, tokens_for(2, 2)))
    with pytest.raises(Draining):
        store.lease_write(ns, tokens_for(3, 2))
    assert store.lookup(ns, tokens) == len(tokens)
    n, blocks = store.get(ns, tokens)
    assert n == len(tokens) and blocks == payloads(spec, tokens)
    store.set_read_only(False)
    assert not store.read_only
    put(store, ns, spec, 2, 2)


def test_pinned_prefix_survives_pressure_and_unpin_lets_it_go(store):
    spec = small_spec()
    ns = store.register(spec)
    pinned = put(store, ns, spec, 1, 4)
    info = store.pin(ns, pinned)
    assert info.tokens == len(pinned) and info.bytes == 4 * spec.block_bytes
    assert store.pinned_bytes == 4 * spec.block_bytes
    assert store.pin(ns, pinned) == info  # idempotent, charged once
    assert store.pinned_bytes == 4 * spec.block_bytes
    fill(store, ns, spec, 100, 200)
    assert store.stats().tiers[0].evictions > 0
    assert store.lookup(ns, pinned) == len(pinned)
    store.check()
    store.unpin(ns, pinned)
    assert store.pinned_bytes == 0 and store.pins() == []
    fill(store, ns, spec, 400, 200)
    assert store.lookup(ns, pinned) == 0
    store.check()


def test_overlapping_pins_count_shared_blocks_once(store):
    spec = small_spec()
    ns = store.register(spec)
    long = put(store, ns, spec, 1, 4)
    store.pin(ns, long[:8])
    store.pin(ns, long)
    assert store.pinned_bytes == 4 * spec.block_bytes
    assert store.pinned_bytes_of(ns) == 4 * spec.block_bytes
    store.unpin(ns, long)
    assert store.pinned_bytes == 2 * spec.block_bytes  # the short pin still holds 2 blocks
    store.unpin(ns, long[:8])
    assert store.pinned_bytes == 0


def test_pin_budget_and_bad_pins(store):
    spec = small_spec()
    ns = store.register(spec)
    store.pin_budget_bytes = 3 * spec.block_bytes
    tokens = put(store, ns, spec, 1, 4)
    with pytest.raises(CapacityError):
        store.pin(ns, tokens)
    assert store.pinned_bytes == 0 and store.pins() == []
    fill(store, ns, spec, 100, 200)  # the refused pin left nothing locked
    assert store.lookup(ns, tokens) == 0
    tokens = put(store, ns, spec, 2, 3)
    store.pin(ns, tokens)
    with pytest.raises(NotFound):
        store.pin(ns, tokens_for(3, 2))  # not cached
    with pytest.raises(InvalidArgument):
        store.pin(ns, tokens[:2])  # less than a block
    with pytest.raises(NotFound):
        store.unpin(ns, tokens_for(3, 2))
    with pytest.raises(NotFound):
        store.pin(b"\0" * 16, tokens)


def test_concurrent_pins_of_one_prefix_hold_one_lease(store):
    spec = small_spec()
    ns = store.register(spec)
    tokens = put(store, ns, spec, 1, 3)
    threads = [threading.Thread(target=store.pin, args=(ns, tokens)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.pins()) == 1 and store.lease_count == 1
    store.unpin(ns, tokens)
    assert store.lease_count == 0


def test_evict_namespace_and_prefix(store):
    spec, other = small_spec(), small_spec("other")
    ns, ns2 = store.register(spec), store.register(other)
    a = put(store, ns, spec, 1, 3)
    b = put(store, ns, spec, 2, 2)
    branch = a.copy()
    branch[8:] += 1  # shares a's first two blocks
    store.put(ns, branch, payloads(spec, branch))
    keep = put(store, ns2, other, 3, 2)
    # a prefix: every sequence starting with a[:8] (both a and branch) goes; a[:4] stays
    result = store.evict(ns, a[:8])
    assert result.blocks == 3 and result.skipped == 0
    assert store.lookup(ns, a) == 4 and store.lookup(ns, branch) == 4
    assert store.lookup(ns, b) == len(b)
    assert store.evict(ns, tokens_for(9, 2)).blocks == 0  # not cached
    store.pin(ns, b)
    result = store.evict(ns)
    assert result.blocks == 1 and result.skipped == 2 and result.bytes == spec.block_bytes
    assert store.lookup(ns, a) == 0 and store.lookup(ns, b) == len(b)
    assert store.lookup(ns2, keep) == len(keep)
    with pytest.raises(InvalidArgument):
        store.evict(ns, a[:3])
    store.check()


def test_set_policy_takes_effect(store):
    spec = small_spec()
    ns = store.register(spec)
    assert store.policy_names() == {"cpu": "lru"}
    fill(store, ns, spec, 0, 200)  # the CPU tier is full: every put evicts
    old = put(store, ns, spec, 1000, 2)
    assert store.set_policy("cpu", "mru") == "lru"
    assert store.policy_names() == {"cpu": "mru"} and store.settings()["cpu_policy"] == "mru"
    store.check()
    newest = put(store, ns, spec, 1001, 2)  # evicts the most recent blocks: ``old``'s tail
    assert store.lookup(ns, old) < len(old)
    assert store.lookup(ns, newest) == len(newest)
    store.set_policy("cpu", "lru")
    put(store, ns, spec, 1002, 2)
    assert store.lookup(ns, newest) == len(newest)
    with pytest.raises(InvalidArgument):
        store.set_policy("cpu", "no-such-policy")
    with pytest.raises(InvalidArgument):
        store.set_policy("tape", "lru")
    assert store.policy_names() == {"cpu": "lru"}


def test_set_policy_refuses_offline_only_policies(store):
    spec = small_spec()
    ns = store.register(spec)
    tokens = put(store, ns, spec, 1, 3)
    with pytest.raises(InvalidArgument, match="offline"):
        store.set_policy("cpu", "opt")  # Belady's OPT needs the future: nothing to evict by
    assert store.policy_names() == {"cpu": "lru"} and store.settings()["cpu_policy"] == "lru"
    with pytest.raises(InvalidArgument, match="offline"):
        TieredStore(StoreConfig(cpu_bytes=64 << 10, cpu_policy="opt"))
    assert store.lookup(ns, tokens) == len(tokens)


def test_pin_budget_defaults_to_a_quarter_of_the_cpu_tier():
    with TieredStore(StoreConfig(cpu_bytes=64 << 10)) as s:
        assert s.pin_budget_bytes == 16 << 10 == s.settings()["pin_budget_bytes"]
        assert not s.may_block and s.capabilities.leases
    with TieredStore(StoreConfig(cpu_bytes=64 << 10, pin_budget_bytes="4KiB")) as s:
        assert s.pin_budget_bytes == 4096
