"""FIFO: evict the block inserted longest ago; hits change nothing.

The baseline that S3-FIFO and SIEVE build on. Ordered by insertion sequence
in a lazy heap, so an interior block that becomes a leaf tail goes out in its
original insertion order.
"""

from __future__ import annotations

from kvstore.eviction.heap import HeapPolicy


class FIFOPolicy(HeapPolicy):
    name = "fifo"

    def on_insert(self, key: bytes) -> None:
        if key in self._entry:
            return
        self._set(key, 0.0)

    def on_access(self, key: bytes) -> None:
        self._reactivate(key)  # a parked or pending key keeps its place in the queue
