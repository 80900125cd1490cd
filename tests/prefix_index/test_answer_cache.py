"""Kept prompts' lookup answers (``answer_cache``): reused only while the tree is unchanged."""

import gc

import numpy as np
import pytest

from kvstore import block_keys
from kvstore.prefix_index import BlockMeta, RadixTree
from kvstore.prefix_index.answer_cache import AnswerCache, cacheable
from kvstore.prefix_index.query_bytes import bytes_tokens
from tests.conftest import TEST_SEED

pytestmark = pytest.mark.unit
B = 4


def put(tree, tokens, extra=b""):
    metas = [BlockMeta(key=k, size=10) for k in block_keys(tokens, B, extra=extra)]
    return tree.insert(tokens, metas, extra=extra)


def kept(tokens) -> np.ndarray:
    """A prompt as the prompt memo keeps it: an array over its own bytes."""
    return bytes_tokens(np.asarray(tokens, dtype=np.uint32).tobytes())


def test_only_arrays_over_their_own_bytes_are_cacheable():
    assert cacheable(kept(range(8)))
    assert not cacheable(np.arange(8, dtype=np.uint32))  # a fresh array: would only churn
    assert not cacheable(kept(range(8))[:4])  # part of its bytes
    assert not cacheable(kept(range(8))[::-1])  # not in order


def test_an_answer_is_reused_until_the_tree_changes():
    tree = RadixTree(B)
    base = list(range(100, 116))  # 4 blocks
    put(tree, base[:8])
    query = kept(base)
    assert tree.cached_tokens(query) == 8
    assert tree.cached_tokens(query) == 8
    assert tree.answers.hits == 1
    put(tree, base)  # the rest of the prompt arrives: a new generation
    assert tree.cached_tokens(query) == 16
    key = block_keys(base, B)[-1]
    tree.remove(key)  # evicted: a new generation again
    assert tree.cached_tokens(query) == 12
    assert tree.answers.hits == 1  # neither answer came from the cache
    tree.clear()
    assert tree.cached_tokens(query) == 0


def test_an_insert_that_adds_nothing_keeps_the_generation():
    tree = RadixTree(B)
    base = list(range(16))
    put(tree, base)
    before = tree.generation
    put(tree, base[:8])  # cached already
    assert tree.generation == before


def test_the_extra_is_part_of_the_answer():
    tree = RadixTree(B)
    base = list(range(16))
    put(tree, base, extra=b"lora")
    query = kept(base)
    assert tree.cached_tokens(query, b"lora") == 16
    assert tree.cached_tokens(query, b"") == 0
    assert tree.cached_tokens(query, b"lora") == 16


def test_an_entry_never_outlives_its_array():
    cache = AnswerCache()
    query = kept(range(8))
    cache.put(query, 0, b"", 8)
    key = id(query)
    del query
    gc.collect()
    assert cache._tables[b""][key][0]() is None  # dead: no object reusing the id can match it
    other = kept(range(8))
    assert cache.get(other, 0, b"") is None


def test_a_full_cache_starts_over():
    cache = AnswerCache(capacity=3)
    arrays = [kept([i] * 4) for i in range(4)]
    for i, a in enumerate(arrays[:3]):
        cache.put(a, 0, b"", i)
    assert len(cache) == 3
    cache.put(arrays[3], 0, b"", 3)
    assert len(cache) == 1 and cache.get(arrays[3], 0, b"") == 3
    assert cache.get(arrays[0], 0, b"") is None


def test_random_changes_never_serve_a_stale_answer():
    """Kept prompts asked about between random inserts and evictions answer as a fresh walk."""
    rng = np.random.default_rng(TEST_SEED)
    print("seed", TEST_SEED, "(KVSTORE_TEST_SEED)")
    tree = RadixTree(B)
    prompts = [list(rng.integers(0, 3, size=int(rng.integers(4, 40)))) for _ in range(30)]
    queries = [kept(p) for p in prompts]
    batch = tuple(queries)  # also asked as one kept batch
    for _ in range(400):
        roll = rng.random()
        if roll < 0.3:
            p = prompts[int(rng.integers(len(prompts)))]
            cut = int(rng.integers(0, len(p) // B + 1)) * B
            try:
                put(tree, p[:cut])
            except Exception:  # a key cached under another prefix: the tree refused it
                pass
        elif roll < 0.5:
            keys = list(tree.evictable_keys())
            if keys:
                tree.remove(keys[int(rng.integers(len(keys)))])
        i = int(rng.integers(len(queries)))
        fresh = np.array(prompts[i], dtype=np.uint32)  # not cacheable: always walked
        assert tree.cached_tokens(queries[i]) == tree.cached_tokens(fresh), (i, prompts[i])
        if roll > 0.9:  # the batch forms (lookup_many) answer the same
            walked = [tree.cached_tokens(np.array(p, dtype=np.uint32)) for p in prompts]
            assert tree.cached_tokens_many(queries) == walked
            kept_now = tree.kept_answers(batch)
            assert kept_now is None or kept_now[0] == walked
    assert tree.answers.hits > 0


def test_a_kept_batch_is_found_by_its_identity_under_the_same_generation():
    tree = RadixTree(B)
    base = list(range(100, 116))
    put(tree, base[:8])
    batch = (kept(base), kept(base[:6]), kept([7] * 8))
    assert tree.kept_answers(batch) is None  # never walked: nothing kept
    assert tree.cached_tokens_many(list(batch)) == [8, 4, 0]
    assert tree.kept_answers(batch) == ([8, 4, 0], 4 + 1 + 2)  # each kept: now kept whole
    assert tree.answers._batch[0] is batch
    assert tree.kept_answers(batch) == ([8, 4, 0], 7)  # by identity
    assert tree.kept_answers(tuple(batch)) == ([8, 4, 0], 7)  # tuple(t) is t: the same
    assert tree.kept_answers(batch, b"lora") is None  # another extra
    again = tuple(list(batch))  # an equal tuple, another object: prompt by prompt
    assert again is not batch and tree.kept_answers(again) == ([8, 4, 0], 7)
    put(tree, base)  # a new generation: nothing kept survives
    assert tree.answers._batch is None or tree.answers.generation != tree.generation
    assert tree.kept_answers(again) is None
    assert tree.cached_tokens_many(list(again)) == [16, 4, 0]


def test_a_kept_batch_is_never_a_list_or_arrays_the_caller_may_change():
    tree = RadixTree(B)
    put(tree, list(range(8)))
    mutable = np.arange(8, dtype=np.uint32)
    assert tree.cached_tokens_many([mutable]) == [8]
    assert tree.kept_answers((mutable,)) is None  # a writable array's answer is never kept
    queries = [kept(range(8))]
    tree.cached_tokens_many(queries)
    assert tree.kept_answers(queries) == ([8], 2)
    assert tree.answers._batch is None  # a list is not kept whole: the caller may change it
