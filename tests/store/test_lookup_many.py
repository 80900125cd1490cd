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
        assert sum(store.lookup_many(ns, kept)) < 12 * 64  # evictions happened
        extras = [b"lora" if i % 2 else b"" for i in range(len(kept))]
        assert store.lookup_many(ns, kept, extras) == [
            store.lookup(ns, p, e) for p, e in zip(prompts, extras)]
    finally:
        store.close()
