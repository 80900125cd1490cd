"""The eviction policy interface: one per tier.

A policy tracks block keys and, when the tier needs room, names victims. It
never removes anything itself: the tier asks ``victims(n, may_evict)`` and
removes (or demotes) what comes back, then calls ``on_remove`` for each.

``may_evict(key)`` is the tier's veto: blocks that are locked (being read or
written) or that are not the tail of a leaf in the prefix tree (a prefix must
never lose its middle) are skipped. A policy may return fewer than ``n`` keys
when not enough are evictable. A victim that the tier does not remove after
all (it could not be demoted) stays tracked and may be named again.

Policies that want the tree's shape (depth, descendants, parent) receive a
read-only ``TreeView`` through ``bind``. Every built-in policy accepts an
optional ``capacity`` keyword (in blocks) as a sizing hint for its queues;
without it the policy sizes them from the number of blocks it tracks.

Cost of vetoes (see ``kvstore.eviction.scan``): a key vetoed because it still
has children is set aside until one of its children leaves, so skipping it is
paid once, not on every call; a key vetoed for another reason (locked) costs
one step per call, bounded by the number of blocks in flight.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

MayEvict = Callable[[bytes], bool]


# -- hints (issue 14) ----------------------------------------------------------
@dataclass(frozen=True)
class Hint:
    """What an engine tells the store about some blocks; changes only the order of eviction.

    * ``session_end``: the conversation these blocks belong to will not
      continue. Its *private* blocks become the first victims: a hinted block
      is private when every branch below it in the prefix tree is a private
      hinted block too (decided through the bound ``TreeView`` when the hint
      arrives: a block that has a child outside the hinted set, e.g. a system
      prompt other conversations extend, is not private and the hint leaves
      it alone). Without a bound view every hinted block counts as private.
      A later hit on a block (someone did use it) clears the mark.
    * ``keep_until``: protect the blocks until this time, on the policy's
      ``clock`` (``time.monotonic`` in a store; the trace's time in a replay).
    * ``priority``: > 0 protects the blocks until a later hint says otherwise
      (or until ``keep_until`` when given); among protected blocks that must go
      after all, the lowest priority goes first, then the earliest ``keep_until``.

    A protected block goes only when nothing unprotected may go. A hint
    replaces any earlier hint on the same block (``Hint()`` clears it);
    ``session_end`` wins over protection. Keys that are not resident are ignored.
    """

    session_end: bool = False
    keep_until: float | None = None
    priority: int = 0

    @property
    def protects(self) -> bool:
        return not self.session_end and (self.priority > 0 or self.keep_until is not None)


class TreeView(Protocol):
    """What a prefix-aware policy may ask the index about a resident block."""

    def depth(self, key: bytes) -> int:
        """Blocks from the root to this block (the first block has depth 1)."""

    def num_children(self, key: bytes) -> int:
        """Branches below this block (0 for the last block of a leaf)."""

    def parent(self, key: bytes) -> bytes | None:
        """The block before this one in its prefix (None for a first block).

        Optional: policies work with views that lack it, but then they cannot
        set vetoed interior blocks aside (see ``kvstore.eviction.scan``).
        """


class EvictionPolicy(ABC):
    """Base of every policy. Operations must be O(1) or O(log n) amortised."""

    name: ClassVar[str] = "base"
    #: the time base of ``Hint.keep_until``; a replay sets it to the trace's time
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def bind(self, view: TreeView) -> None:
        """Give the policy the tree's read-only view (default: ignored)."""
        self.view = view

    @abstractmethod
    def on_insert(self, key: bytes) -> None:
        """A block entered the tier."""

    @abstractmethod
    def on_access(self, key: bytes) -> None:
        """A resident block was read (a hit)."""

    @abstractmethod
    def on_remove(self, key: bytes) -> None:
        """A block left the tier (evicted, demoted or deleted)."""

    @abstractmethod
    def victims(self, n: int, may_evict: MayEvict) -> list[bytes]:
        """Up to ``n`` distinct resident keys to evict, each passing ``may_evict``."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of resident keys tracked."""

    def __contains__(self, key: bytes) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def on_hint(self, keys: Iterable[bytes], hint: Hint) -> None:
        """The engine says ``hint`` about ``keys`` (see ``Hint``).

        Default: ignored (a hint never changes correctness). Every built-in
        policy honours it (``kvstore.eviction.scan.ScanPolicy``).
        """
        return None
