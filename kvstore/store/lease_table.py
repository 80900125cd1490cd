"""LeaseTable: the store's open leases, by id.

A lease pins a prefix by locking its deepest node in the namespace's tree
(which locks every ancestor): locked blocks are never evicted, demoted,
deleted or overwritten, so their arena slots can be copied outside the store
lock. The table only keeps the records; the store locks and unlocks the tree.
Not thread-safe on its own: the store calls it under its lock.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from kvstore.errors import NotFound
from kvstore.store.block_state import NamespaceState
from kvstore.store.memory_tier import MemoryTier
from kvstore.store_api import ArenaSlot, Lease


@dataclass
class LeaseRecord:
    """What the store must undo or finish for a lease: its locked node, its slots."""

    lease: Lease
    nst: NamespaceState
    node: object  # the tree node locked for the lease
    tier: MemoryTier  # where the slots are
    tokens: np.ndarray | None = None  # write leases: the whole-block tokens
    extra: bytes = b""
    keys: list[bytes] | None = None  # write leases: every block key of ``tokens``
    deadline: float = 0.0  # write leases: taken back after this (time.monotonic)


class LeaseTable:
    def __init__(self, write_seconds: float = 0.0) -> None:
        self._records: dict[int, LeaseRecord] = {}
        self._writes: dict[int, LeaseRecord] = {}  # write leases with a deadline, oldest first
        self._ids = itertools.count(1)
        self.write_seconds = write_seconds  # 0: write leases never expire
        self.expired = 0  # write leases taken back at their deadline

    def open(self, nst: NamespaceState, node, tier: MemoryTier, num_tokens: int,
             slots: list[ArenaSlot], first_block: int = 0, writable: bool = False,
             tokens=None, extra: bytes = b"", keys=None, expires: bool = True) -> LeaseRecord:
        """Record a new lease (its node already locked) and return it.

        ``expires=False``: a write lease without a deadline (the store's own put).
        """
        lease = Lease(next(self._ids), nst.fp, num_tokens, slots, first_block, writable)
        rec = LeaseRecord(lease, nst, node, tier, tokens, extra, keys)
        self._records[lease.lease_id] = rec
        if writable and expires and self.write_seconds:
            rec.deadline = time.monotonic() + self.write_seconds
            self._writes[lease.lease_id] = rec
        return rec

    def expired_writes(self, now: float | None = None) -> list[int]:
        """Ids of the write leases past their deadline (oldest first)."""
        now = time.monotonic() if now is None else now
        out = []
        for lease_id, rec in self._writes.items():  # insertion order = deadline order
            if rec.deadline > now:
                break
            out.append(lease_id)
        return out

    def take(self, lease_id: int) -> LeaseRecord:
        """Remove and return lease ``lease_id``; ``NotFound`` when there is none."""
        rec = self._records.pop(lease_id, None)
        if rec is None:
            raise NotFound(f"no lease {lease_id} (released, or a write lease past its deadline)")
        self._writes.pop(lease_id, None)
        return rec

    def peek(self, lease_id: int) -> LeaseRecord:
        rec = self._records.get(lease_id)
        if rec is None:
            raise NotFound(f"no lease {lease_id} (released, or a write lease past its deadline)")
        return rec

    def discard(self, lease_id: int) -> LeaseRecord | None:
        """Remove and return lease ``lease_id``, or None (releasing twice is harmless)."""
        self._writes.pop(lease_id, None)
        return self._records.pop(lease_id, None)

    def __len__(self) -> int:
        return len(self._records)

