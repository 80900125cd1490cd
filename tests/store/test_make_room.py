"""make_room: the store evicts ahead of a write, the way the write would, within a bound."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.transport.room_ahead import RoomAhead
from tests.store.helpers import make_spec, payloads_for

pytestmark = pytest.mark.unit
SPEC = make_spec(block_tokens=16, dim=16)  # 4 KiB blocks
CAPACITY = 64  # blocks
SHARE = 16  # the daemon's evict_ahead_share


def prompt(seed: int, nblocks: int) -> np.ndarray:
    return np.arange(nblocks * 16, dtype=np.uint32) + seed * 1_000_000


@pytest.fixture
def full():
    """A store whose CPU arena is full: 16 prompts of 4 blocks, the oldest first."""
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * 4096, evict_ahead_share=SHARE))
    ns = store.register(SPEC)
    for seed in range(16):
        toks = prompt(seed, 4)
        assert store.put(ns, toks, payloads_for(ns, SPEC, toks)) == 64
    yield store, ns
    store.close()


def evictions(store: TieredStore) -> int:
    return store.tier_stats("cpu").evictions


def test_room_made_ahead_is_what_the_next_write_takes_without_evicting(full):
    store, ns = full
    before = evictions(store)
    assert store.make_room(ns, 4) == 4
    assert evictions(store) == before + 4
    assert store.lookup(ns, prompt(0, 4)) == 0  # the least recent prompt went, as a write
    assert store.lookup(ns, prompt(1, 4)) == 64  # would have evicted it
    toks = prompt(99, 4)
    lease = store.lease_write(ns, toks)
    assert len(lease.slots) == 4 and evictions(store) == before + 4  # nothing evicted inline
    store.release(lease.lease_id)
    assert store.make_room(ns, 4) == 4 and evictions(store) == before + 4  # room is there


def test_room_ahead_is_bounded_and_refused_on_a_read_only_or_closed_store(full):
    store, ns = full
    before = evictions(store)
    most = CAPACITY // SHARE
    assert store.make_room(ns, 1000) == most
    assert evictions(store) == before + most
    store.set_read_only(True)
    assert store.make_room(ns, 4) == 0
    store.set_read_only(False)
    store.close()
    assert store.make_room(ns, 4) == 0


def test_room_ahead_never_evicts_a_leased_prefix(full):
    store, ns = full
    read = store.lease_read(ns, prompt(0, 4))  # the least recent: pinned by the lease
    assert read.num_tokens == 64
    assert store.make_room(ns, 4) == 4
    assert store.lookup(ns, prompt(0, 4)) == 64  # kept; the next least recent went
    assert store.lookup(ns, prompt(1, 4)) == 0
    store.release(read.lease_id)


class GatedStore(TieredStore):
    """The store with its ``make_room`` held until the test lets it go (the one seam)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.calls: list[tuple[bytes, int]] = []
        self.two_calls = threading.Event()

    def make_room(self, ns: bytes, nblocks: int) -> int:
        self.gate.wait(10)
        self.calls.append((ns, nblocks))
        made = super().make_room(ns, nblocks)
        if len(self.calls) == 2:
            self.two_calls.set()
        return made


def test_room_ahead_runs_one_pass_at_a_time_and_keeps_the_largest_request():
    store = GatedStore(StoreConfig(cpu_bytes=CAPACITY * 4096, evict_ahead_share=SHARE))
    ns = store.register(SPEC)

    async def scenario():
        room = RoomAhead(store, None)
        room.ask(ns, 2)  # runs at once (held at the gate)
        room.ask(ns, 3)
        room.ask(ns, 1)  # merged: the largest waits
        room.ask(ns, 0)  # nothing to make
        store.gate.set()
        await asyncio.get_running_loop().run_in_executor(None, store.two_calls.wait, 10)
        return room.passes

    try:
        assert asyncio.run(scenario()) == 2
        assert store.calls == [(ns, 2), (ns, 3)]
    finally:
        store.close()


def test_the_embedded_default_evicts_only_when_room_is_needed():
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * 4096))
    try:
        ns = store.register(SPEC)
        for seed in range(16):
            toks = prompt(seed, 4)
            store.put(ns, toks, payloads_for(ns, SPEC, toks))
        assert not store.evicts_ahead and store.make_room(ns, 4) == 0
        assert store.lookup(ns, prompt(0, 4)) == 64
    finally:
        store.close()
