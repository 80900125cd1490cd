"""Policies on a real radix tree: interior blocks wait parked, locks are held aside."""

import pytest

from kvstore import block_keys
from kvstore.eviction import FIFOPolicy, LRUPolicy, PrefixAwarePolicy, get_policy
from kvstore.prefix_index import BlockMeta, RadixTree


def put(tree, policy, tokens):
    match = tree.match(tokens)
    for block in match.blocks:
        policy.on_access(block.key)
    keys = block_keys(tokens, 1)
    res = tree.insert(tokens, match.blocks + [BlockMeta(key=x) for x in keys[len(match.blocks) :]])
    for block in res.added:
        policy.on_insert(block.key)
    return keys


def evict_one(tree, policy):
    out = policy.victims(1, tree.is_evictable)
    for key in out:
        tree.remove(key)
        policy.on_remove(key)
    return out[0] if out else None


def test_lru_on_a_tree_takes_the_chain_from_its_tail():
    tree, p = RadixTree(1), LRUPolicy()
    p.bind(tree)
    a = put(tree, p, [1, 2, 3])
    b = put(tree, p, [7, 8])
    # a's blocks are the oldest: a3, then its parent a2 (now a leaf tail), then a1
    assert [evict_one(tree, p) for _ in range(3)] == [a[2], a[1], a[0]]
    assert evict_one(tree, p) == b[1]
    assert not p._parked  # a2 and a1 were woken by their children's removal


def test_interior_block_is_parked_once_not_rescanned():
    tree, p = RadixTree(1), FIFOPolicy()
    p.bind(tree)
    shared = put(tree, p, [1, 2])  # the oldest blocks, but interior from now on
    leaves = [put(tree, p, [1, 2, 10 + i])[2] for i in range(5)]
    asked = []

    def may_evict(key):
        asked.append(key)
        return tree.is_evictable(key)

    for leaf in leaves:
        assert p.victims(1, may_evict) == [leaf]
        tree.remove(leaf)
        p.on_remove(leaf)
    # block 1 was turned down once and then waited parked; block 2, whose
    # children left one by one, was looked at again once per child, no more
    s1, s2 = shared
    assert asked == [s1, s2, leaves[0]] + [x for leaf in leaves[1:] for x in (s2, leaf)]
    assert p.victims(1, may_evict) == [shared[1]]  # woken when its last child left
    assert len(p) == len(tree) == 2


def test_locked_leaf_is_held_and_put_back():
    tree, p = RadixTree(1), LRUPolicy()
    p.bind(tree)
    a = put(tree, p, [1, 2])
    b = put(tree, p, [5, 6])
    node = tree.match([1, 2]).node
    tree.lock(node)
    assert evict_one(tree, p) == b[1]  # a is older but locked
    tree.unlock(node)
    assert evict_one(tree, p) == a[1]


def test_view_without_parent_still_correct():
    class Narrow:  # a store's view that only knows depth and fan-out
        def __init__(self, tree):
            self.tree = tree

        def depth(self, key):
            return self.tree.depth(key)

        def num_children(self, key):
            return self.tree.num_children(key)

    tree, p = RadixTree(1), LRUPolicy()
    p.bind(Narrow(tree))
    a = put(tree, p, [1, 2, 3])
    assert [evict_one(tree, p) for _ in range(3)] == [a[2], a[1], a[0]]
    assert not p._parked


@pytest.mark.parametrize("name", ["lru", "fifo", "lfu", "s3fifo", "sieve", "arc", "prefix", "opt"])
def test_every_policy_drains_a_tree(name):
    tree, p = RadixTree(1), get_policy(name, capacity=4)
    p.bind(tree)
    for prompt in ([1, 2, 3, 4], [1, 2, 5], [1, 6], [9, 9, 9]):
        put(tree, p, prompt)
    drained = []
    while (key := evict_one(tree, p)) is not None:
        drained.append(key)
    assert len(tree) == 0 and len(p) == 0 and len(set(drained)) == 9


def test_prefix_aware_evicts_prompt_tails_first():
    tree, p = RadixTree(1), PrefixAwarePolicy()
    p.bind(tree)
    a = put(tree, p, [1, 2, 3])
    b = put(tree, p, [5, 6])
    # both prompts' last blocks go before a's older interior blocks
    assert [evict_one(tree, p) for _ in range(3)] == [a[2], b[1], a[1]]


def test_prefix_aware_learns_from_blocks_that_come_back():
    tree, p = RadixTree(1), PrefixAwarePolicy(capacity=8)
    p.bind(tree)
    a = put(tree, p, [1, 2, 3])
    cls = p._state[a[1]][2]
    evict_one(tree, p)
    evict_one(tree, p)  # a's middle block leaves; its class counts an eviction
    stats = p.stats(cls)
    assert (stats.reuses, stats.evictions, stats.gap) == (1, 2, None)  # prior 1/1, one eviction
    put(tree, p, [1, 2, 3])  # a[0] is read again, a[1] comes back: two reuses
    assert (stats.reuses, stats.evictions) == (3, 1)  # the eviction of a[1] became a reuse
    assert stats.gap is not None and stats.gap > 0
    assert p._state[a[1]][0] == 2  # its touches survive through the ghost
