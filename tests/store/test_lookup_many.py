"""TieredStore.lookup_many: each answer is the single lookup's, kept prompts included."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.prefix_index.query_bytes import bytes_tokens
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from tests.store.helpers import make_spec, payloads_for

pytestmark = pytest.mark.unit
SPEC = make_spec(block_tokens=16, dim=16)  # 4 KiB blocks


def prompt(seed: int, nblocks: int) -> np.ndarray:
    return np.arange(nblocks * 16, dtype=np.uint32) + seed * 1_000_000


def test_batch_answers_match_single_lookups_across_puts_and_evictions():
    store = TieredStore(StoreConfig(cpu_bytes=24 * 4096))  # room for 24 blocks: puts evict
    try:
        ns = store.register(SPEC)
        prompts = [prompt(s, 4) for s in range(12)]
        kept = [bytes_tokens(p.tobytes()) for p in prompts]  # as the prompt memo keeps them
        for step in range(12):
            toks = prompts[step]
            store.put(ns, toks, payloads_for(ns, SPEC, toks))
            singles = [store.lookup(ns, p) for p in prompts]
            assert store.lookup_many(ns, kept) == singles
            assert store.lookup_many(ns, kept) == singles  # again: from the kept answers
            assert store.lookup_many(ns, prompts) == singles
            batch = tuple(kept)  # a batch the caller asks about again (the memo's repeated step)
            for _ in range(4):  # walked, kept prompt by prompt, kept whole, from the batch
                assert store.lookup_many(ns, batch) == singles
        assert sum(store.lookup_many(ns, kept)) < 12 * 64  # evictions happened
        extras = [b"lora" if i % 2 else b"" for i in range(len(kept))]
        assert store.lookup_many(ns, kept, extras) == [
            store.lookup(ns, p, e) for p, e in zip(prompts, extras)]
    finally:
        store.close()


def test_the_lookup_counters_move_alike_on_every_path():
    """A batch answered from its kept answers counts the same blocks as one walked."""
    store = TieredStore(StoreConfig(cpu_bytes=64 * 4096))
    try:
        ns = store.register(SPEC)
        toks = prompt(1, 4)
        store.put(ns, toks, payloads_for(ns, SPEC, toks))
        ragged = np.concatenate([prompt(1, 2), np.arange(5, dtype=np.uint32)])  # a tail
        batch = tuple(bytes_tokens(p.tobytes()) for p in (toks, prompt(2, 3), ragged))
        nst = store._namespaces.get(ns)
        counts = []
        for _ in range(4):
            before = (nst.lookup_hits, nst.lookup_misses)
            assert store.lookup_many(ns, batch) == [64, 0, 32]
            counts.append((nst.lookup_hits - before[0], nst.lookup_misses - before[1]))
        assert counts == [(6, 3)] * 4  # 4 + 3 + 2 whole blocks asked, 4 + 2 found
        assert nst.tree.answers.hits >= 6  # the later calls came from kept answers
    finally:
        store.close()
