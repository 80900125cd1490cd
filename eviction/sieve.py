"""SIEVE (Zhang et al., NSDI'24): a FIFO queue, a visited bit and a moving hand.

New blocks enter at the head; a hit only sets the block's visited bit (no
reordering, so hits are cheap). To evict, the hand walks from where it
stopped towards the head (wrapping to the tail): a visited block has its bit
cleared and stays where it is; the first unvisited block is the victim and
the hand stays just past it. Survivors keep their position, so popular
blocks sift towards the tail region the hand sweeps rarely, while new blocks
that are never hit leave after one pass. Each step clears a bit or finds a
victim: amortised O(1).

A candidate the tier turns down stays behind the hand, as in SIEVE any block
the hand passes over does: it is unlinked, and put back just behind the hand
(with its visited bit as it was) when it is let go or, if it was an interior
block, when it becomes a leaf tail. So it is looked at again after the hand
wraps around, not at once: a chain is not eaten from its tail in one sweep.
"""

from __future__ import annotations

from kvstore.eviction.scan import ScanPolicy


class SIEVEPolicy(ScanPolicy):
    name = "sieve"

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self._visited: dict[bytes, bool] = {}  # every resident key
        self._newer: dict[bytes, bytes | None] = {}  # linked keys only
        self._older: dict[bytes, bytes | None] = {}
        self._head: bytes | None = None  # newest
        self._tail: bytes | None = None  # oldest
        self._hand: bytes | None = None  # next key to examine (None: start at the tail)

    # -- the queue --------------------------------------------------------------
    def _link_before(self, key: bytes, nxt: bytes | None) -> None:
        """Link ``key`` on the older side of ``nxt`` (None: as the new head)."""
        prev = self._head if nxt is None else self._older[nxt]
        self._older[key], self._newer[key] = prev, nxt
        if prev is None:
            self._tail = key
        else:
            self._newer[prev] = key
        if nxt is None:
            self._head = key
        else:
            self._older[nxt] = key

    def _unlink(self, key: bytes) -> None:
        prev, nxt = self._older.pop(key), self._newer.pop(key)
        if self._hand == key:
            self._hand = nxt
        if prev is None:
            self._tail = nxt
        else:
            self._newer[prev] = nxt
        if nxt is None:
            self._head = prev
        else:
            self._older[nxt] = prev

    # -- policy -----------------------------------------------------------------
    def on_insert(self, key: bytes) -> None:
        if key in self._visited:
            self.on_access(key)
            return
        self._visited[key] = False
        self._link_before(key, None)

    def on_access(self, key: bytes) -> None:
        if key in self._visited:
            self._reactivate(key)
            self._visited[key] = True

    def _pop(self) -> tuple[bytes, None] | None:
        node = self._hand if self._hand is not None else self._tail
        while node is not None:
            if self._visited[node]:
                self._visited[node] = False
                node = self._newer[node]
                if node is None:
                    node = self._tail
                continue
            self._hand = self._newer[node]
            self._unlink(node)
            return node, None
        return None

    def _put_back(self, key: bytes, slot: None) -> None:
        # just behind the hand: like any block the hand has passed, it is
        # looked at again after the hand wraps around
        self._link_before(key, self._hand)

    def _detach(self, key: bytes) -> None:
        self._unlink(key)

    def _gone(self, key: bytes, slot: None, evicted: bool) -> None:
        del self._visited[key]

    def __len__(self) -> int:
        return len(self._visited)

    def __contains__(self, key: bytes) -> bool:
        return key in self._visited
