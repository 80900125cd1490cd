"""Victim selection under a veto, shared by every built-in policy.

A policy keeps its keys in some order (a heap, FIFO queues, a clock) and
offers them as candidates one at a time (``_pop``). The tier's ``may_evict``
turns a candidate down for one of two reasons, and each is paid for once:

* **structural**: the block still has children in the prefix tree, so it is
  not a leaf tail. It stays that way until its last child leaves. The key is
  *parked*: taken out of the order with its place (``slot``) remembered, and
  put back (``_put_back``) when this policy removes one of its children, when
  it is accessed, or, as a last resort, when nothing else is left to offer.
  So an interior key is offered again at most once per child removed or
  access: amortised O(1) per operation, instead of a rescan of every interior
  block on every call. Telling the two kinds apart needs
  ``TreeView.num_children`` and ``TreeView.parent``; without ``parent`` every
  veto is treated as transient (still correct, but interior blocks are
  scanned again on every call).
* **transient**: anything else (locked, being written, refused by the tier).
  The key is held aside for the rest of the call and then put back where it
  was: one extra step per such key per call, bounded by the blocks in flight.

Victims handed out are *pending* until ``on_remove``; the tier may fail to
evict one, so pending keys go back to their place at the next call and no key
is ever lost. ``len`` and ``in`` count active, parked and pending keys alike.

Hints (``on_hint``, see ``base.Hint`` and ``kvstore.eviction.hints``): the
private blocks of a ``session_end`` hint are *doomed*: taken out of the order
(their slot remembered) and offered before it; a protected block is *held*
out of the order when it comes up and offered only when nothing else may go,
or put back when its protection ends. A hit on a doomed block puts it back.

A batch ``victims(n)`` is chosen against the tree as it is: removing a victim
can make its parent the best next victim, which only a later call can see. A
tier that wants the exact order on a tree asks for one victim at a time (the
store and the hit-rate replay do).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from kvstore.eviction.base import EvictionPolicy, Hint, MayEvict, TreeView
from kvstore.eviction.hints import Guards, private_blocks

_UNKNOWN = object()


class ScanPolicy(EvictionPolicy):
    """Base of the built-in policies: veto handling around a policy's own order."""

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.view: TreeView | None = None
        self._can_park = False
        self._parked: dict[bytes, Any] = {}
        self._pending: dict[bytes, Any] = {}
        self._parent_of: dict[bytes, bytes | None] = {}  # pending victim -> its parent
        self._high_water = 0
        self._doomed: dict[bytes, Any] = {}  # session over: first victims, in this order
        self._pending_doomed: set[bytes] = set()
        self._guards = Guards()
        self._held: dict[bytes, Any] = {}  # protected keys set aside from the order

    # -- hooks for the concrete policy ----------------------------------------
    @abstractmethod
    def _pop(self) -> tuple[bytes, Any] | None:
        """Take the next candidate out of the order: ``(key, slot)``, or None."""

    @abstractmethod
    def _put_back(self, key: bytes, slot: Any) -> None:
        """Return a candidate taken by ``_pop`` to its place in the order."""

    @abstractmethod
    def _detach(self, key: bytes) -> Any:
        """Take an active key out of the order (it is being removed); return its slot."""

    @abstractmethod
    def _gone(self, key: bytes, slot: Any, evicted: bool) -> None:
        """Forget a removed key; ``evicted`` when it was a victim this policy chose."""

    def _withdraw(self, key: bytes) -> Any:
        """Take an active key out of the order so that ``_put_back`` restores it."""
        return self._detach(key)

    # -- shared machinery -----------------------------------------------------
    def bind(self, view: TreeView) -> None:
        self.view = view
        self._can_park = callable(getattr(view, "parent", None))

    def _cap(self) -> int:
        """Capacity in blocks: the hint, else the most blocks seen when evicting."""
        return self.capacity or max(self._high_water, 1)

    def _reactivate(self, key: bytes) -> None:
        """Put a parked, pending, doomed or held key back in the order (it was accessed again)."""
        if key in self._parked:
            self._put_back(key, self._parked.pop(key))
        elif key in self._pending:
            self._parent_of.pop(key, None)
            self._pending_doomed.discard(key)
            self._put_back(key, self._pending.pop(key))
        elif key in self._doomed:  # used after all: the session was not over
            self._put_back(key, self._doomed.pop(key))
        elif key in self._held:
            self._put_back(key, self._held.pop(key))

    # -- hints ----------------------------------------------------------------
    def on_hint(self, keys, hint: Hint) -> None:
        keys = [k for k in dict.fromkeys(keys) if k in self and k not in self._pending]
        if not keys:
            return
        for key in keys:
            self._guards.set(key, hint)
            if key in self._doomed and not hint.session_end:  # a newer hint replaces it
                self._put_back(key, self._doomed.pop(key))
            elif key in self._held and not hint.protects:
                self._put_back(key, self._held.pop(key))
        if not hint.session_end:
            return
        for key in private_blocks(keys, self.view):
            if key in self._doomed:
                continue
            if key in self._held:
                slot = self._held.pop(key)
            elif key in self._parked:
                slot = self._parked.pop(key)
            else:
                slot = self._withdraw(key)
            self._doomed[key] = slot

    def _release_expired(self) -> None:
        now = self.clock()
        for key in self._guards.expired(now):
            if key in self._held and not self._guards.active(key, now):
                self._put_back(key, self._held.pop(key))

    def _offer_doomed(self, n: int, may_evict: MayEvict, out: list[bytes]) -> None:
        doomed, view = self._doomed, self.view
        going: dict[bytes, int] = {}  # key -> its children chosen in this call
        for key in list(doomed):
            if len(out) >= n:
                return
            if may_evict(key):
                self._choose(key, doomed.pop(key), out)
                self._pending_doomed.add(key)
                if self._can_park:
                    parent = self._parent_of[key]
                    going[parent] = going.get(parent, 0) + 1
            elif self._can_park and view.num_children(key) > going.get(key, 0):
                self._parked[key] = doomed.pop(key)  # no longer private: it got a branch

    def victims(self, n: int, may_evict: MayEvict) -> list[bytes]:
        if self.capacity is None:
            self._high_water = max(self._high_water, len(self))
        pending, parked = self._pending, self._parked
        if pending:  # handed out before but not removed after all
            back = {}
            for key in reversed(list(pending)):
                if key in self._pending_doomed:
                    back[key] = pending.pop(key)
                else:
                    self._put_back(key, pending.pop(key))
            if back:  # first victims again, in their order (children before parents)
                self._doomed = {**dict(reversed(back.items())), **self._doomed}
            self._pending_doomed.clear()
            self._parent_of.clear()
        if self._held:
            self._release_expired()
        can_park, view = self._can_park, self.view
        out: list[bytes] = []
        if self._doomed:
            self._offer_doomed(n, may_evict, out)
        held: list[tuple[bytes, Any]] = []
        guards, now = self._guards, None
        refilled = False
        while len(out) < n:
            got = self._pop()
            if got is None:
                if parked and not refilled:  # last resort: offer parked keys again
                    refilled = True
                    for key in list(parked):
                        self._put_back(key, parked.pop(key))
                    continue
                break
            key, slot = got
            if guards.record and key in guards.record:
                now = self.clock() if now is None else now
                if guards.active(key, now):
                    self._held[key] = slot
                    guards.held(key)
                    continue
            if may_evict(key):
                self._choose(key, slot, out)
            elif can_park and view.num_children(key) > 0:
                parked[key] = slot
            else:
                held.append((key, slot))
        for key, slot in reversed(held):
            self._put_back(key, slot)
        if len(out) < n and self._held:  # only protected blocks are left
            for key in sorted(self._held, key=guards.rank):
                if len(out) >= n:
                    break
                if may_evict(key):
                    self._choose(key, self._held.pop(key), out)
        return out

    def _choose(self, key: bytes, slot: Any, out: list[bytes]) -> None:
        out.append(key)
        self._pending[key] = slot
        if self._can_park:
            self._parent_of[key] = self.view.parent(key)

    def on_remove(self, key: bytes) -> None:
        if key in self._pending:
            slot, evicted = self._pending.pop(key), True
            self._pending_doomed.discard(key)
        elif key in self._parked:
            slot, evicted = self._parked.pop(key), False
        elif key in self._doomed:
            slot, evicted = self._doomed.pop(key), False
        elif key in self._held:
            slot, evicted = self._held.pop(key), False
        elif key in self:
            slot, evicted = self._detach(key), False
        else:
            return
        parent = self._parent_of.pop(key, _UNKNOWN)
        if parent is _UNKNOWN and self._can_park:
            try:  # removed without being chosen: ask the tree while it still knows
                parent = self.view.parent(key)
            except KeyError:
                parent = None
        self._guards.record.pop(key, None)
        self._gone(key, slot, evicted)
        if parent in self._parked:  # its child left: it may be a leaf tail now
            self._put_back(parent, self._parked.pop(parent))
