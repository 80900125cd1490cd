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

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Protocol

MayEvict = Callable[[bytes], bool]


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
