"""LFU with dynamic aging (LFU-DA, Arlitt et al. 2000).

Each block has a priority ``K = L + f``: ``f`` counts its touches since it
entered the tier and ``L`` is the cache's age, the priority of the last block
evicted. The smallest ``K`` goes first (ties: the least recently touched).
Plain LFU keeps blocks that were popular long ago forever; with ``L`` a block
entering now starts level with the survivors, so old counts fade unless they
keep growing. O(log n) per operation with a lazy heap.
"""

from __future__ import annotations

from kvstore.eviction.heap import Entry, HeapPolicy


class LFUPolicy(HeapPolicy):
    name = "lfu"

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self._freq: dict[bytes, int] = {}
        self.age = 0.0  # L: priority of the last evicted block

    def on_insert(self, key: bytes) -> None:
        if key in self._entry:
            self.on_access(key)
            return
        self._freq[key] = 1
        self._set(key, self.age + 1)

    def on_access(self, key: bytes) -> None:
        if key not in self._entry:
            return
        self._reactivate(key)
        self._freq[key] += 1
        self._set(key, self.age + self._freq[key])

    def _gone(self, key: bytes, slot: Entry, evicted: bool) -> None:
        super()._gone(key, slot, evicted)
        del self._freq[key]
        if evicted:
            self.age = max(self.age, slot[0])
