"""Belady's OPT: evict the block whose next use lies farthest in the future.

Offline only: it needs the future. ``schedule[key]`` lists, in order, the
times at which ``key`` will be touched (inserted or accessed); every
``on_insert``/``on_access`` of the key consumes the next entry, and its
priority becomes minus the time of the touch after that (never again: minus
infinity, so those go first). On a prefix tree only leaf tails may go, and a
block's next use is never later than its parent's, so the farthest evictable
block is also a farthest block overall: this is the ceiling that online
policies are measured against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvstore.eviction.heap import HeapPolicy

NEVER = float("inf")


class OPTPolicy(HeapPolicy):
    name = "opt"

    def __init__(
        self,
        schedule: Mapping[bytes, Sequence[float]] | None = None,
        capacity: int | None = None,
    ) -> None:
        super().__init__(capacity)
        self.schedule = schedule if schedule is not None else {}
        self._cursor: dict[bytes, int] = {}  # touches consumed so far, per key

    def _touch(self, key: bytes) -> None:
        i = self._cursor.get(key, 0) + 1
        self._cursor[key] = i
        times = self.schedule.get(key, ())
        self._set(key, -(times[i] if i < len(times) else NEVER))

    def on_insert(self, key: bytes) -> None:
        self._reactivate(key)
        self._touch(key)

    def on_access(self, key: bytes) -> None:
        if key in self._entry:
            self._reactivate(key)
            self._touch(key)
