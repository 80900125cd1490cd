"""TierSet alone (a CPU tier, no SSD): allocation by policy, leaf tails only, dirty, lost."""

import threading

import numpy as np
import pytest

from kvstore.eviction import LRUPolicy
from kvstore.keys import ROOT_KEY, block_keys
from kvstore.store.block_state import (
    BlockState,
    CompositeTreeView,
    NamespaceState,
    StructuralTreeView,
    new_meta,
)
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.read_path import cached_tokens, match_prefix
from kvstore.store.tier_set import TierSet

from .helpers import make_spec

SPEC = make_spec()  # 512-byte blocks of 4 tokens


@pytest.fixture
def tiers():
    """``(tier set, the namespace's state)``: one CPU tier of 64 slots, LRU."""
    cpu = CPUTier(8 * 4096, 4096)
    nst = NamespaceState.create(SPEC)
    ts = TierSet([cpu], {nst.fp: nst}, threading.Condition(threading.RLock()), ssd_enabled=False)
    ts.set_policy(cpu, LRUPolicy())
    yield ts, nst
    cpu.close()


def put(ts: TierSet, nst: NamespaceState, tokens) -> list[bytes]:
    """Insert a prompt's blocks and make them CPU-resident (what a commit does)."""
    keys = block_keys(tokens, SPEC.block_tokens)
    metas = [new_meta(k, SPEC.block_bytes, BlockState(keys[i - 1] if i else ROOT_KEY, b""))
             for i, k in enumerate(keys)]
    added = {id(m) for m in nst.tree.insert(np.asarray(tokens, dtype=np.uint32), metas).added}
    for meta in metas:
        if id(meta) in added:
            slot = ts.alloc(ts.cpu, SPEC.block_bytes)
            assert slot is not None
            ts.install(ts.cpu, nst, meta.key, meta.handle, slot)
    return keys


def test_the_bottom_tier_without_ssd_drops_leaf_tails_oldest_first(tiers):
    tiers, nst = tiers
    assert isinstance(tiers.cpu.policy.view, StructuralTreeView)  # vetoes are structural here
    first = put(tiers, nst, list(range(16)))  # 4 blocks, the oldest
    for i in range(1, 16):
        put(tiers, nst, list(range(i * 1000, i * 1000 + 16)))  # 64 blocks in all: the tier is full
    assert tiers.cpu.used_bytes == 64 * SPEC.block_bytes
    put(tiers, nst, list(range(10**6, 10**6 + 4)))  # one more: the oldest prompt's tail goes
    assert first[3] not in nst.tree and first[2] in nst.tree
    assert tiers.cpu.stats.evictions == 1
    assert len(tiers.dirty) == 64  # resident, no SSD copy
    tiers.check()


def test_locked_blocks_are_never_victims(tiers):
    tiers, nst = tiers
    a = put(tiers, nst, list(range(16)))
    node = nst.tree.node_of(a[-1])
    nst.tree.lock(node)
    for i in range(1, 20):
        put(tiers, nst, list(range(i * 1000, i * 1000 + 16)))
    assert all(k in nst.tree for k in a)
    nst.tree.unlock(node)
    tiers.check()


def test_lost_blocks_are_dropped_once_unpinned(tiers):
    tiers, nst = tiers
    a = put(tiers, nst, list(range(16)))
    node = nst.tree.node_of(a[-1])
    nst.tree.lock(node)
    tiers.lose(nst, a[1])  # pinned: only marked
    assert a[1] in nst.tree and nst.state(a[1]).lost and tiers.lost
    nst.tree.unlock(node)
    tiers.retry_lost()
    assert a[0] in nst.tree and a[1] not in nst.tree and a[3] not in nst.tree
    assert not tiers.lost and len(tiers.dirty) == 1
    tiers.check()


def test_lookups_stop_before_a_lost_block(tiers):
    """A lookup's count (``cached_tokens``) cuts before a lost block, as ``match_prefix``."""
    tiers, nst = tiers
    toks = np.arange(16, dtype=np.uint32)
    a = put(tiers, nst, toks)
    bt = SPEC.block_tokens
    assert cached_tokens(tiers, nst, toks, b"") == 4 * bt
    node = nst.tree.node_of(a[-1])
    nst.tree.lock(node)
    tiers.lose(nst, a[1])  # pinned: only marked, still in the tree
    assert cached_tokens(tiers, nst, toks, b"") == bt
    assert match_prefix(tiers, nst, toks, b"", False).num_tokens == bt
    nst.tree.unlock(node)
    tiers.retry_lost()
    assert cached_tokens(tiers, nst, toks, b"") == bt
    tiers.check()


def test_a_tier_above_ssd_gets_a_view_without_parent():
    cpu = CPUTier(4 * 4096, 4096)
    try:
        ts = TierSet([cpu], {}, threading.Condition(), ssd_enabled=True)
        ts.set_policy(cpu, LRUPolicy())
        view = cpu.policy.view
        assert isinstance(view, CompositeTreeView) and not hasattr(view, "parent")
        assert ts.policy_names() == {"cpu": "lru"} and ts.named("cpu") is cpu
    finally:
        cpu.close()
