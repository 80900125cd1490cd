"""LRU: evict the least recently inserted or accessed block."""

from __future__ import annotations

from collections import OrderedDict

from kvstore.eviction.base import EvictionPolicy, MayEvict


class LRUPolicy(EvictionPolicy):
    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[bytes, None] = OrderedDict()

    def on_insert(self, key: bytes) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: bytes) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def on_remove(self, key: bytes) -> None:
        self._order.pop(key, None)

    def victims(self, n: int, may_evict: MayEvict) -> list[bytes]:
        out = []
        for key in self._order:  # oldest first; vetoed keys are skipped
            if len(out) == n:
                break
            if may_evict(key):
                out.append(key)
        return out

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: bytes) -> bool:
        return key in self._order
