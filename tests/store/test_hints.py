"""TieredStore.hint: an engine's hints reorder evictions and never change what is cached.

A CPU-only store of 32 blocks (16 KiB of 512-byte blocks): prefixes of a few
blocks are put, one is hinted, and fillers force evictions one at a time.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from kvstore.errors import InvalidArgument
from kvstore.eviction import available_policies
from kvstore.prefix_index import Tier
from kvstore.store import StoreConfig, TieredStore
from kvstore.store_api import PrefixHint

from .helpers import make_spec, payloads_for

BT = 4  # tokens per block (make_spec)
CAPACITY = 32  # blocks in 16 KiB
ONLINE = [p for p in available_policies() if p != "opt"]


def toks(start: int, blocks: int) -> np.ndarray:
    return np.arange(start, start + blocks * BT, dtype=np.uint32)


def small_store(policy: str = "lru") -> tuple[TieredStore, bytes, object]:
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * 512, cpu_policy=policy))
    spec = make_spec()
    return store, store.register(spec), spec


def put(store, ns, spec, tokens) -> int:
    return store.put(ns, tokens, payloads_for(ns, spec, tokens))


def fill(store, ns, spec, first: int, blocks: int) -> None:
    """Put ``blocks`` one-block fillers (fresh prefixes), each a new most recent block."""
    for i in range(blocks):
        put(store, ns, spec, toks(first + 1000 * i, 1))


@pytest.mark.parametrize("policy", ONLINE)
def test_session_end_prefix_goes_before_an_older_unhinted_one(policy):
    store, ns, spec = small_store(policy)
    with store:
        older, ended = toks(10_000, 3), toks(20_000, 3)
        put(store, ns, spec, older)
        put(store, ns, spec, ended)
        fill(store, ns, spec, 100_000, CAPACITY - 6)  # the store is full now
        assert store.lookup(ns, older) == 12 and store.lookup(ns, ended) == 12
        assert store.hint(ns, ended, PrefixHint(session_end=True)) == 12
        fill(store, ns, spec, 500_000, 3)  # three evictions
        assert store.lookup(ns, ended) == 0, "the ended session's blocks are the first victims"
        assert store.lookup(ns, older) == 12
        store.check()


def test_without_the_hint_lru_takes_the_older_prefix_first():
    """The control of the test above: the order really is the hint's doing."""
    store, ns, spec = small_store("lru")
    with store:
        older, ended = toks(10_000, 3), toks(20_000, 3)
        put(store, ns, spec, older)
        put(store, ns, spec, ended)
        fill(store, ns, spec, 100_000, CAPACITY - 6 + 3)
        assert store.lookup(ns, older) == 0 and store.lookup(ns, ended) == 12


def test_session_end_spares_a_shared_system_prompt():
    """Only the ended conversation's private tail goes; the system prompt another
    conversation extends stays (and so does that conversation)."""
    store, ns, spec = small_store("lru")
    with store:
        system = toks(1, 2)
        ended = np.concatenate([system, toks(30_000, 2)])
        other = np.concatenate([system, toks(40_000, 2)])
        put(store, ns, spec, ended)
        put(store, ns, spec, other)
        fill(store, ns, spec, 100_000, CAPACITY - 6)
        assert store.hint(ns, ended, PrefixHint(session_end=True)) == 16
        fill(store, ns, spec, 500_000, 2)
        assert store.lookup(ns, ended) == 8  # the system prompt is still there
        assert store.lookup(ns, other) == 16


@pytest.mark.parametrize("hint", [PrefixHint(priority=5), PrefixHint(keep_until=600)])
def test_protected_prefix_outlives_newer_ones(hint):
    store, ns, spec = small_store("lru")
    with store:
        kept = toks(10_000, 3)
        put(store, ns, spec, kept)
        assert store.hint(ns, kept, hint) == 12
        fill(store, ns, spec, 100_000, 2 * CAPACITY)  # every other block went, some twice
        assert store.lookup(ns, kept) == 12
        store.check()


def test_keep_until_is_seconds_from_now_and_runs_out():
    store, ns, spec = small_store("lru")
    with store:
        kept = toks(10_000, 3)
        put(store, ns, spec, kept)
        store.hint(ns, kept, PrefixHint(keep_until=0.05))
        time.sleep(0.1)
        fill(store, ns, spec, 100_000, CAPACITY)  # LRU order again: the oldest goes
        assert store.lookup(ns, kept) == 0


def test_a_later_hint_replaces_an_earlier_one():
    store, ns, spec = small_store("lru")
    with store:
        kept = toks(10_000, 3)
        put(store, ns, spec, kept)
        store.hint(ns, kept, PrefixHint(priority=3))
        store.hint(ns, kept, PrefixHint())  # cleared
        fill(store, ns, spec, 100_000, CAPACITY)
        assert store.lookup(ns, kept) == 0


def test_hints_never_change_what_is_cached():
    store, ns, spec = small_store("lru")
    with store:
        a = toks(10_000, 3)
        put(store, ns, spec, a)
        before = store.get(ns, a)
        assert store.hint(ns, a, PrefixHint(session_end=True)) == 12
        assert store.get(ns, a) == before  # nothing dropped until room is needed
        longer = np.concatenate([a, toks(50, 2)])
        assert store.hint(ns, longer, PrefixHint(priority=1)) == 12  # the cached part
        assert store.hint(ns, toks(77_000, 2), PrefixHint(session_end=True)) == 0  # gone: no-op
        assert store.hint(ns, a[:3], PrefixHint(session_end=True)) == 0  # no whole block
        assert store.hint(ns, a, PrefixHint(session_end=True), extra=b"other") == 0
        store.check()


def test_hint_reaches_blocks_on_every_memory_tier(tmp_path):
    """With an SSD tier the CPU tier demotes; a hint still reorders its demotions."""
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * 512, ssd_dir=str(tmp_path),
                                    ssd_bytes=1 << 20, segment_bytes=64 << 10))
    spec = make_spec()
    ns = store.register(spec)
    with store:
        older, ended = toks(10_000, 3), toks(20_000, 3)
        put(store, ns, spec, older)
        put(store, ns, spec, ended)
        fill(store, ns, spec, 100_000, CAPACITY - 6)
        store.hint(ns, ended, PrefixHint(session_end=True))
        fill(store, ns, spec, 500_000, 3)
        store.wait_writes()
        assert store.lookup(ns, ended) == 12 and store.lookup(ns, older) == 12  # SSD: cached
        assert tiers_of(store, ns, ended) == [Tier.SSD] * 3  # demoted first
        assert tiers_of(store, ns, older) == [Tier.CPU] * 3
        store.check()


def tiers_of(store, ns, tokens) -> list:
    return [meta.tier for meta in store._namespaces.get(ns).tree.match(tokens).blocks]


@pytest.mark.parametrize("bad", [dict(keep_until=-1), dict(keep_until=float("nan")),
                                 dict(keep_until=float("inf")), dict(priority=1.5),
                                 dict(priority=1 << 64), dict(session_end=1)])
def test_bad_hints_are_refused(bad):
    with pytest.raises(InvalidArgument):
        PrefixHint(**bad)


def test_session_end_spares_a_shared_prompt_in_a_store_with_an_ssd_tier(tmp_path):
    """The CPU tier demotes (its policy's view has no parent to tell private blocks by):
    the store itself hands the policy only the ended conversation's private tail."""
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * 512, ssd_dir=str(tmp_path),
                                    ssd_bytes=1 << 20, segment_bytes=64 << 10))
    spec = make_spec()
    ns = store.register(spec)
    with store:
        system = toks(1, 2)
        ended = np.concatenate([system, toks(30_000, 2)])
        other = np.concatenate([system, toks(40_000, 2)])
        put(store, ns, spec, ended)
        put(store, ns, spec, other)
        fill(store, ns, spec, 100_000, CAPACITY - 6)
        assert store.hint(ns, system, PrefixHint(priority=4)) == 8
        assert store.hint(ns, ended, PrefixHint(session_end=True)) == 16
        fill(store, ns, spec, 500_000, 2)
        store.wait_writes()
        assert tiers_of(store, ns, ended) == [Tier.CPU] * 2 + [Tier.SSD] * 2
        assert tiers_of(store, ns, other) == [Tier.CPU] * 4
        fill(store, ns, spec, 700_000, CAPACITY)  # the system prompt is still protected
        assert tiers_of(store, ns, system) == [Tier.CPU] * 2
        store.check()


def test_private_tail():
    from kvstore.store.block_state import NamespaceState, private_tail

    store, ns, spec = small_store()
    with store:
        a = np.concatenate([toks(1, 2), toks(100, 2)])
        b = np.concatenate([toks(1, 2), toks(200, 1)])
        put(store, ns, spec, a)
        put(store, ns, spec, b)
        store.check()  # takes the store lock: the puts' deferred commits are in the tree
        nst: NamespaceState = store._namespaces.get(ns)
        chain = [m.key for m in nst.tree.match(a).blocks]
        assert private_tail(nst.tree, chain) == chain[:1:-1]  # a's own two blocks
        assert private_tail(nst.tree, chain[:3]) == []  # a's third block has a child
        assert private_tail(nst.tree, [m.key for m in nst.tree.match(toks(1, 2)).blocks]) == []
