"""Hint bookkeeping shared by the built-in policies (see ``base.Hint``).

``private_blocks`` decides which hinted blocks a ``session_end`` may make
first victims; ``Guards`` remembers which blocks are protected and until when.
``ScanPolicy`` puts both around every built-in policy's own order:

* doomed blocks (``session_end``, private) are taken out of the order and
  offered before it, oldest hint first and, within a hint, deepest first (the
  tail of a chain goes, then its parent becomes the tail);
* a protected block that comes up in the order is held aside while its
  protection lasts, and offered only when nothing else may go.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable

from kvstore.eviction.base import Hint, TreeView


def private_blocks(keys: Iterable[bytes], view: TreeView | None) -> list[bytes]:
    """The hinted ``keys`` no other live prefix goes through, deepest first.

    A block is private when each of its branches in the tree (``num_children``)
    starts with a private hinted block: the last block of a leaf is private,
    and so is every block above it up to (excluding) the first one that has a
    branch outside the hinted set. Without a view (or one lacking ``parent``)
    every key counts as private, in the order given.
    """
    keys = list(dict.fromkeys(keys))
    if view is None or not callable(getattr(view, "parent", None)):
        return keys
    order = sorted(keys, key=view.depth, reverse=True)
    private_children: Counter[bytes] = Counter()
    out = []
    for key in order:
        if view.num_children(key) == private_children[key]:
            out.append(key)
            parent = view.parent(key)
            if parent is not None:
                private_children[parent] += 1
    return out


class Guards:
    """Protection records: key -> (priority, keep_until or None)."""

    def __init__(self) -> None:
        self.record: dict[bytes, tuple[int, float | None]] = {}
        self._expiry: list[tuple[float, bytes]] = []  # (keep_until, key) of held keys

    def set(self, key: bytes, hint: Hint) -> None:
        if hint.protects:
            self.record[key] = (hint.priority, hint.keep_until)
        else:
            self.record.pop(key, None)

    def active(self, key: bytes, now: float) -> bool:
        """Whether ``key`` is protected at ``now`` (an expired record is dropped)."""
        rec = self.record.get(key)
        if rec is None:
            return False
        until = rec[1]
        if until is None or now < until:
            return True
        del self.record[key]
        return False

    def held(self, key: bytes) -> None:
        """``key`` was set aside while protected: remember when to look again."""
        until = self.record[key][1]
        if until is not None:
            heapq.heappush(self._expiry, (until, key))

    def expired(self, now: float) -> list[bytes]:
        """Keys whose ``keep_until`` has passed since they were held aside."""
        out = []
        while self._expiry and self._expiry[0][0] <= now:
            out.append(heapq.heappop(self._expiry)[1])
        return out

    def rank(self, key: bytes) -> tuple[int, float]:
        """Order among protected keys that must go after all: lowest first."""
        priority, until = self.record.get(key, (0, None))
        return (priority, float("inf") if until is None else until)
