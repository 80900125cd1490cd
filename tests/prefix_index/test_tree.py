import numpy as np
import pytest

from kvstore import block_keys
from kvstore.errors import InvalidArgument
from kvstore.prefix_index import BlockMeta, RadixTree

B = 4


def metas(tokens, extra=b""):
    return [BlockMeta(key=k, size=10) for k in block_keys(tokens, B, extra=extra)]


def put(tree, tokens, extra=b""):
    return tree.insert(tokens, metas(tokens, extra), extra=extra)


def test_match_empty_and_partial_tail():
    tree = RadixTree(B)
    assert tree.match([1, 2, 3]).num_tokens == 0
    put(tree, list(range(10)))  # 2 whole blocks, tail dropped
    assert len(tree) == 2
    assert tree.match(list(range(10))).num_tokens == 8
    assert tree.match(list(range(7))).num_tokens == 4
    assert tree.match([0, 1, 2, 9]).num_tokens == 0


def test_split_on_divergence_keeps_both_branches():
    tree = RadixTree(B)
    a = list(range(16))
    b = list(range(8)) + [99] * 8
    put(tree, a)
    res = put(tree, b)
    assert res.existing_blocks == 2 and len(res.added) == 2
    assert tree.match(a).num_tokens == 16
    assert tree.match(b).num_tokens == 16
    assert tree.match(a).keys == block_keys(a, B)
    assert tree.match(b).keys == block_keys(b, B)
    assert sorted(len(leaf.blocks) for leaf in tree.leaves()) == [2, 2]


def test_divergence_inside_a_block_matches_whole_blocks_only():
    tree = RadixTree(B)
    put(tree, list(range(12)))
    q = list(range(6)) + [77] * 6
    assert tree.match(q).num_tokens == 4


def test_extra_separates_roots():
    tree = RadixTree(B)
    put(tree, list(range(8)), extra=b"lora1")
    assert tree.match(list(range(8))).num_tokens == 0
    assert tree.match(list(range(8)), extra=b"lora1").num_tokens == 8


def test_only_unlocked_leaf_tails_are_removable():
    tree = RadixTree(B)
    tokens = list(range(12))
    put(tree, tokens)
    k0, k1, k2 = block_keys(tokens, B)
    assert not tree.is_evictable(k0) and not tree.is_evictable(k1) and tree.is_evictable(k2)
    with pytest.raises(InvalidArgument):
        tree.remove(k1)
    m = tree.match(tokens[:8])
    tree.lock(m.node)
    assert not tree.is_evictable(k2)
    with pytest.raises(InvalidArgument):
        tree.remove(k2)
    tree.unlock(m.node)
    tree.remove(k2)
    assert tree.match(tokens).num_tokens == 8
    tree.remove(k1)
    tree.remove(k0)
    assert len(tree) == 0 and list(tree.leaves()) == []


def test_unlock_without_lock_raises():
    tree = RadixTree(B)
    put(tree, list(range(4)))
    node = tree.match(list(range(4))).node
    with pytest.raises(InvalidArgument):
        tree.unlock(node)


def test_split_keeps_lock_of_locked_path():
    tree = RadixTree(B)
    a = list(range(16))
    put(tree, a)
    m = tree.match(a)
    tree.lock(m.node)
    put(tree, list(range(8)) + [5] * 8)  # splits the locked node
    for key in block_keys(a, B):
        assert tree.is_locked(key)
    tree.unlock(m.node)
    assert all(not tree.is_locked(k) for k in block_keys(a, B))


def test_touch_updates_stats():
    t = [0.0]
    tree = RadixTree(B, clock=lambda: t[0])
    put(tree, list(range(8)))
    t[0] = 5.0
    m = tree.match(list(range(8)), touch=True)
    assert [b.hits for b in m.blocks] == [1, 1]
    assert [b.last_access for b in m.blocks] == [5.0, 5.0]


def test_prefix_of_rebuilds_tokens():
    tree = RadixTree(B)
    a = list(range(16))
    put(tree, a, extra=b"e")
    put(tree, list(range(8)) + [3] * 8, extra=b"e")
    key = block_keys(a, B, extra=b"e")[-1]
    tokens, extra, blocks = tree.prefix_of(key)
    assert tokens.tolist() == a and extra == b"e" and len(blocks) == 4


def test_numpy_and_torch_queries():
    import torch

    tree = RadixTree(B)
    put(tree, np.arange(8))
    assert tree.match(torch.arange(8)).num_tokens == 8


def test_tree_view_and_remove_subtree():
    tree = RadixTree(B)
    a = list(range(16))
    b = list(range(8)) + [9] * 8
    put(tree, a)
    put(tree, b)
    ka = block_keys(a, B)
    assert [tree.depth(k) for k in ka] == [1, 2, 3, 4]
    assert tree.num_children(ka[1]) == 2 and tree.num_children(ka[0]) == 1
    assert tree.num_children(ka[3]) == 0
    removed = tree.remove_subtree(ka[1])
    assert len(removed) == 1 + 2 + 2 and len(tree) == 1
    assert tree.match(a).num_tokens == 4 and tree.match(b).num_tokens == 4


def test_depth_parent_and_get_survive_split_and_merge():
    tree = RadixTree(B)
    a = list(range(16))
    b = list(range(8)) + [9] * 8
    put(tree, a)
    put(tree, b)  # splits a's node after 2 blocks
    ka, kb = block_keys(a, B), block_keys(b, B)
    assert [tree.parent(k) for k in ka] == [None, *ka[:3]]
    assert tree.parent(kb[2]) == ka[1] and tree.depth(kb[3]) == 4
    assert all(tree.get(k).key == k for k in ka + kb)
    tree.remove(kb[3])
    tree.remove(kb[2])  # a's two nodes merge again
    assert [tree.depth(k) for k in ka] == [1, 2, 3, 4]
    assert all(tree.get(k).key == k for k in ka)
    with pytest.raises(KeyError):
        tree.parent(kb[2])


def test_insert_rejects_a_key_twice_in_one_prompt():
    tree = RadixTree(B)
    tokens = list(range(8))
    meta = BlockMeta(key=b"k" * 16)
    with pytest.raises(InvalidArgument):
        tree.insert(tokens, [meta, BlockMeta(key=b"k" * 16)])


def test_cached_tokens_counts_what_match_finds():
    """The lookups' count-only walk: whole blocks, across edges, a mismatch mid-edge or
    mid-block, a partial tail, another extra, a query shorter than the edge."""
    tree = RadixTree(B)
    base = list(range(100, 124))  # 6 blocks
    put(tree, base)
    put(tree, base[:8] + list(range(500, 516)))  # splits the edge after 2 blocks
    put(tree, base[:12], extra=b"lora")
    queries = [base, base + [1, 2], base[:10], base[:3], base[:8] + list(range(500, 512)),
               base[:13] + [0] + base[14:], base[:5] + [0] + base[6:], [0] * 8, [],
               base[:13] + [0] + base[14:20], base[:9] + [0] + base[10:18],
               base[:8] + list(range(500, 516)) + [7] * 8]
    for q in queries:
        for extra in (b"", b"lora", b"none"):
            arr = np.array(q, dtype=np.uint32)
            assert tree.cached_tokens(arr, extra) == tree.match(arr, extra).num_tokens, (q, extra)
    assert tree.cached_tokens(np.array(base, dtype=np.uint32)) == 24
    assert tree.cached_tokens(np.array(base[:13] + [0] + base[14:], dtype=np.uint32)) == 12
