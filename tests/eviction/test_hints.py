"""Hints (issue 14): session_end blocks go first, protected blocks last, in every built-in policy.

Driven through a real radix tree: whatever was inserted and hit before, the
private blocks of a ``session_end`` hint are evicted before every unhinted
block, and blocks protected by ``keep_until`` / ``priority`` after them.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import block_keys
from kvstore.eviction import Hint, get_policy
from kvstore.eviction.hints import private_blocks
from kvstore.eviction.registry import BUILTIN
from kvstore.prefix_index import BlockMeta, RadixTree

from .helpers import evict, fill, k

NAMES = sorted(BUILTIN)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def put(tree, policy, tokens) -> list[bytes]:
    match = tree.match(tokens)
    for block in match.blocks:
        policy.on_access(block.key)
    keys = block_keys(tokens, 1)
    metas = match.blocks + [BlockMeta(key=key) for key in keys[len(match.blocks):]]
    for block in tree.insert(tokens, metas).added:
        policy.on_insert(block.key)
    return keys


def drain(tree, policy) -> list[bytes]:
    """Evict everything one block at a time, in the policy's order."""
    order = []
    while len(tree):
        (key,) = policy.victims(1, tree.is_evictable)
        tree.remove(key)
        policy.on_remove(key)
        order.append(key)
    return order


def make(name, capacity=64):
    policy = get_policy(name, capacity=capacity)
    clock = Clock()
    policy.clock = clock
    tree = RadixTree(1)
    policy.bind(tree)
    return tree, policy, clock


# a conversation: chains of distinct tokens under a shared first block (0)
chains = st.lists(st.lists(st.integers(1, 1000), min_size=1, max_size=5, unique=True),
                  min_size=3, max_size=8, unique_by=lambda c: c[0])


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts=chains, hits=st.lists(st.integers(0, 7), max_size=10), data=st.data())
def test_session_end_first_and_protected_last(name, prompts, hits, data):
    tree, policy, clock = make(name)
    paths = [put(tree, policy, [0, *p]) for p in prompts]
    for h in hits:  # some hits, so each policy's own order is not just insertion
        put(tree, policy, [0, *prompts[h % len(prompts)]])
    ended = data.draw(st.integers(0, len(paths) - 1))
    kept = (ended + 1) % len(paths)
    policy.on_hint(paths[ended], Hint(session_end=True))
    policy.on_hint(paths[kept][1:], Hint(keep_until=10.0))
    clock.now = 5.0
    order = drain(tree, policy)
    doomed = set(paths[ended][1:])  # the shared first block is not private
    protected = set(paths[kept][1:])
    assert set(order[: len(doomed)]) == doomed
    assert set(order[-len(protected) - 1:-1]) == protected  # only block 0 (their root) after them


@pytest.mark.parametrize("name", NAMES)
def test_protection_ends_at_keep_until(name):
    tree, policy, clock = make(name)
    a, b = put(tree, policy, [1, 2]), put(tree, policy, [3, 4])
    policy.on_hint(a, Hint(keep_until=10.0))
    clock.now = 5.0
    assert policy.victims(1, tree.is_evictable) == [b[1]]  # a is protected
    clock.now = 11.0  # expired: a is an ordinary block again, older than b
    policy.on_hint([], Hint())
    assert policy.victims(1, tree.is_evictable)[0] in (a[1], b[1])
    assert drain(tree, policy)  # and everything still goes


@pytest.mark.parametrize("name", NAMES)
def test_priority_protects_until_cleared_and_orders_the_protected(name):
    tree, policy, _ = make(name)
    a, b, c = put(tree, policy, [1]), put(tree, policy, [2]), put(tree, policy, [3])
    policy.on_hint(a, Hint(priority=2))
    policy.on_hint(b, Hint(priority=1))
    assert drain(tree, policy) == [c[0], b[0], a[0]]
    tree, policy, _ = make(name)
    a, b = put(tree, policy, [1]), put(tree, policy, [2])
    policy.on_hint(a, Hint(priority=5))
    policy.on_hint(a, Hint())  # cleared
    policy.on_hint(b, Hint(priority=5))
    assert drain(tree, policy) == [a[0], b[0]]


@pytest.mark.parametrize("name", NAMES)
def test_a_hit_clears_session_end_and_gone_keys_are_a_no_op(name):
    tree, policy, _ = make(name)
    a, b = put(tree, policy, [1, 2]), put(tree, policy, [3, 4])
    policy.on_hint(b, Hint(session_end=True))
    policy.on_hint([k("gone"), k("never")], Hint(session_end=True))
    policy.on_hint([k("gone")], Hint(keep_until=1e9, priority=3))
    put(tree, policy, [3, 4])  # the session went on after all
    assert len(policy) == len(tree) == 4
    order = drain(tree, policy)
    assert sorted(order) == sorted(a + b)


@pytest.mark.parametrize("name", NAMES)
def test_doomed_victim_not_removed_stays_first(name):
    tree, policy, _ = make(name)
    put(tree, policy, [1, 2])
    b = put(tree, policy, [3, 4])
    policy.on_hint(b, Hint(session_end=True))
    assert policy.victims(1, tree.is_evictable) == [b[1]]  # the tier fails to evict it
    assert policy.victims(1, tree.is_evictable) == [b[1]]  # still the first victim
    assert drain(tree, policy)[:2] == [b[1], b[0]]


def test_private_blocks_stop_at_a_branch_of_another_prefix():
    tree = RadixTree(1)
    a = block_keys([0, 1, 2, 3], 1)
    tree.insert([0, 1, 2, 3], [BlockMeta(key=x) for x in a])
    other = block_keys([0, 1, 9], 1)
    tree.insert([0, 1, 9], [BlockMeta(key=x) for x in tree.match([0, 1]).keys + other[2:]])
    # block 1 has a branch (9) outside the hinted set: it and block 0 are shared
    assert private_blocks(a, tree) == [a[3], a[2]]
    # with the other branch hinted too, the whole subtree is private
    assert private_blocks(a + other[2:], tree) == [a[3], a[2], other[2], a[1], a[0]]
    assert private_blocks(a, None) == a


def test_unbound_policy_treats_every_hinted_key_as_private():
    policy = get_policy("lru", capacity=4)
    fill(policy, "a", "b", "c")
    policy.on_hint([k("c")], Hint(session_end=True))
    assert evict(policy, 3) == ["c", "a", "b"]


def test_third_party_default_ignores_hints():
    from kvstore.eviction import EvictionPolicy

    class Minimal(EvictionPolicy):
        def on_insert(self, key): ...
        def on_access(self, key): ...
        def on_remove(self, key): ...
        def victims(self, n, may_evict): return []
        def __len__(self): return 0

    Minimal().on_hint([k("a")], Hint(session_end=True))  # a no-op, no error
