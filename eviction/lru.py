"""LRU: evict the least recently inserted or accessed block.

Among the blocks the tier lets go (leaf tails that are not locked), the one
touched longest ago goes first. Kept in a lazy heap ordered by the sequence
number of the last touch, so a parked interior block keeps its true recency
and, once it becomes a leaf tail, goes exactly where LRU would put it.
"""

from __future__ import annotations

from kvstore.eviction.heap import HeapPolicy


class LRUPolicy(HeapPolicy):
    name = "lru"

    def on_insert(self, key: bytes) -> None:
        self._reactivate(key)
        self._set(key, 0.0)

    def on_access(self, key: bytes) -> None:
        if key in self._entry:
            self._reactivate(key)
            self._set(key, 0.0)
