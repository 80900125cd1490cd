"""Hypothesis: every policy, driven through a real tree with locks and vetoes.

Whatever the sequence of inserts, hits, locks, failed and successful
evictions and removals behind the policy's back: ``len`` and ``in`` agree
with the tree, victims are distinct, resident and pass ``may_evict``, and a
policy never starves (when some block may go, it names one).
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import block_keys
from kvstore.eviction import get_policy
from kvstore.eviction.registry import BUILTIN
from kvstore.prefix_index import BlockMeta, RadixTree

prompts = st.lists(st.integers(0, 3), min_size=1, max_size=6)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), prompts),
        st.tuples(st.just("lock"), prompts),
        st.just(("unlock",)),
        st.tuples(st.just("evict"), st.integers(1, 4), st.booleans(), st.integers(0, 7)),
        st.tuples(st.just("drop"), st.integers(0, 50)),
    ),
    max_size=60,
)


@pytest.mark.parametrize("name", sorted(BUILTIN))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, capacity=st.integers(1, 12))
def test_policy_keeps_in_step_with_the_tree(name, steps, capacity):
    tree = RadixTree(1)
    policy = get_policy(name, capacity=capacity)
    policy.bind(tree)
    locks = []
    for step in steps:
        if step[0] == "put":
            match = tree.match(step[1])
            for block in match.blocks:
                policy.on_access(block.key)
            keys = block_keys(step[1], 1)
            metas = match.blocks + [BlockMeta(key=k) for k in keys[len(match.blocks) :]]
            for block in tree.insert(step[1], metas).added:
                policy.on_insert(block.key)
        elif step[0] == "lock":
            node = tree.match(step[1]).node
            if node is not None and not node.is_root:
                tree.lock(node)
                locks.append(node)
        elif step[0] == "unlock" and locks:
            tree.unlock(locks.pop())
        elif step[0] == "evict":
            _, n, remove, salt = step
            veto = {k for k in tree.evictable_keys() if k[0] % 8 == salt}  # transient vetoes

            def may_evict(key, veto=veto):
                return tree.is_evictable(key) and key not in veto

            out = policy.victims(n, may_evict)
            assert len(out) == len(set(out)) <= n
            assert all(key in tree and may_evict(key) for key in out)
            allowed = [k for k in tree.evictable_keys() if k not in veto]
            assert len(out) == min(n, len(allowed))  # never starves
            if remove:  # else: the tier failed to evict them; they stay
                for key in out:
                    tree.remove(key)
                    policy.on_remove(key)
        elif step[0] == "drop":  # removed behind the policy's back (a delete)
            keys = sorted(tree.evictable_keys())
            if keys:
                key = keys[step[1] % len(keys)]
                tree.remove(key)
                policy.on_remove(key)
        assert len(policy) == len(tree)
        assert all(block.key in policy for block in tree.blocks())
