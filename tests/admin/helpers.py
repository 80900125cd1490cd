"""Helpers of the admin tests: small namespaces, deterministic tokens and payloads."""

from __future__ import annotations

import numpy as np

from kvstore.eviction import EvictionPolicy, MayEvict
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store.config import default_policy_factory


def small_spec(model: str = "tiny", block_tokens: int = 4) -> NamespaceSpec:
    # 2 layers x 2 (k,v) x 4 tokens x 2 heads x 8 dim x 2 bytes = 512-byte blocks
    return NamespaceSpec(KVLayout(model, 2, 2, 8, "float16", block_tokens))


def tokens_for(seed: int, nblocks: int, block_tokens: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50_000, nblocks * block_tokens, dtype=np.uint32)


def payloads(spec: NamespaceSpec, tokens, fill: int = 7) -> list[bytes]:
    n = len(tokens) // spec.block_tokens
    return [bytes([(fill + i) % 256]) * spec.block_bytes for i in range(n)]


class MRUPolicy(EvictionPolicy):
    """Evicts the most recently used block first: the opposite of LRU, easy to tell apart."""

    name = "mru"

    def __init__(self) -> None:
        self._order: dict[bytes, None] = {}

    def on_insert(self, key: bytes) -> None:
        self._order.pop(key, None)
        self._order[key] = None

    def on_access(self, key: bytes) -> None:
        if key in self._order:
            self.on_insert(key)

    def on_remove(self, key: bytes) -> None:
        self._order.pop(key, None)

    def victims(self, n: int, may_evict: MayEvict) -> list[bytes]:
        return [k for k in reversed(self._order) if may_evict(k)][:n]

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: bytes) -> bool:
        return key in self._order


def policy_factory(name: str) -> EvictionPolicy:
    """The default factory (registry, else LRU) plus the test-only ``mru``."""
    return MRUPolicy() if name == "mru" else default_policy_factory(name)
