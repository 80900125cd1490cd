"""Priority-ordered policies: evict the smallest priority first (LRU, FIFO, LFU, OPT, ...).

A binary heap with lazy deletion: changing a key's priority pushes a new
entry and leaves the old one behind, stale; a popped entry counts only when
it is still the key's current ``(priority, seq)``. ``seq`` grows with every
change, so equal priorities go out oldest first. When stale entries outnumber
live ones the heap is rebuilt (amortised O(1) per change). Every operation is
O(log n).
"""

from __future__ import annotations

import heapq

from kvstore.eviction.scan import ScanPolicy

Entry = tuple[float, int]  # (priority, seq)


class HeapPolicy(ScanPolicy):
    """Base of priority policies; subclasses call ``_set`` on insert/access."""

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self._entry: dict[bytes, Entry] = {}
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0

    def _set(self, key: bytes, priority: float) -> None:
        """Give active or new ``key`` a new priority (it becomes the newest at that value)."""
        self._seq += 1
        self._entry[key] = (priority, self._seq)
        heapq.heappush(self._heap, (priority, self._seq, key))
        if len(self._heap) > 2 * len(self._entry) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        out = self._parked.keys() | self._pending.keys() | self._doomed.keys() | self._held.keys()
        self._heap = [(p, s, k) for k, (p, s) in self._entry.items() if k not in out]
        heapq.heapify(self._heap)

    def _pop(self) -> tuple[bytes, Entry] | None:
        heap, entry = self._heap, self._entry
        while heap:
            priority, seq, key = heapq.heappop(heap)
            if entry.get(key) == (priority, seq):
                return key, (priority, seq)
        return None

    def _put_back(self, key: bytes, slot: Entry) -> None:
        self._entry[key] = slot  # a withdrawn key's entry was renumbered: restore it
        heapq.heappush(self._heap, (slot[0], slot[1], key))

    def _withdraw(self, key: bytes) -> Entry:
        """Out of the order: renumber the key's entry so its heap entry turns stale."""
        slot = self._entry[key]
        self._seq += 1
        self._entry[key] = (slot[0], self._seq)
        return (slot[0], self._seq)

    def _detach(self, key: bytes) -> Entry:
        return self._entry[key]  # its heap entry turns stale in _gone

    def _gone(self, key: bytes, slot: Entry, evicted: bool) -> None:
        del self._entry[key]

    def priority(self, key: bytes) -> float:
        """Current priority of a resident key (smaller goes first); for tests and tools."""
        return self._entry[key][0]

    def __len__(self) -> int:
        return len(self._entry)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entry
