"""Prefix-aware eviction: recency, plus a learned chance and distance of reuse per kind of block.

Why: in a prefix cache most blocks are never read again (three in four in
the Mooncake conversation trace), and which ones come back depends on what
the tree can tell about them:

* the last block of a prompt is almost never reused (the next turn of a
  conversation rewrites the partial tail), while the blocks before it are
  reused whenever the conversation goes on;
* a block that was read before (a shared system prompt, a conversation that
  came back) is far more likely to be read again, the more so the more often;
* short prompts are continued more often than long ones, so depth matters.

Each block gets a class when touched: ``(touches, is_prompt_tail, depth
bucket)``. Touches include the block's earlier lives: evicted keys are
remembered in a ghost FIFO (``ghost_factor`` x capacity), so a conversation
that returns after its blocks left is recognised. For every class the policy
learns online ``p`` = reuses / (reuses + evictions) (a ghost hit turns an
eviction into a reuse, so a class is not judged by early deaths the policy
caused) and ``gap``, the running mean reuse distance (touches between a
block's last touch and its reuse). A block's priority, fixed at its last
touch, is::

    last_touch + min(horizon * residence * p(class), reach * gap(class))

``residence`` is the running mean age of evicted blocks: a block of a class
that is reused more often lives longer, but not much longer than blocks of
its class usually wait to be reused (past that, it is probably dead; without
this cap, large caches fill with blocks of frequent classes that are never
coming back). Prompt tails seen once go first. Time counts touches.
``horizon = 3`` and ``reach = 3`` were chosen on the two Mooncake traces;
``residence`` includes the longer lives of boosted blocks, which feeds back
into the boost, and horizons of 5 and more overshoot.

All O(log n) (lazy heap); interior blocks wait parked until they become leaf
tails (see ``scan``), so the policy evicts deep, cold, rarely shared blocks
first and keeps shared roots for as long as they pay.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict

from kvstore.eviction.heap import Entry, HeapPolicy

Class = tuple[int, bool, int]
_TAIL_FIRST = -1e18  # prompt tails seen once go before everything else


class ClassStats:
    """What the policy learned about one class of blocks."""

    __slots__ = ("reuses", "evictions", "gap")

    def __init__(self) -> None:
        self.reuses = 1.0  # prior: one of each
        self.evictions = 1.0
        self.gap: float | None = None  # mean reuse distance in touches (None: no reuse yet)

    @property
    def p(self) -> float:
        return self.reuses / (self.reuses + self.evictions)

    def reused(self, gap: int) -> None:
        self.reuses += 1
        self.gap = gap if self.gap is None else self.gap + (gap - self.gap) / 64


class PrefixAwarePolicy(HeapPolicy):
    name = "prefix"

    def __init__(
        self,
        capacity: int | None = None,
        horizon: float = 3.0,
        ghost_factor: float = 4.0,
        depth_buckets: tuple[int, ...] = (4, 16),  # depth >= 4, >= 16: buckets 1 and 2
        max_touches: int = 4,
        reach: float = 3.0,
    ) -> None:
        super().__init__(capacity)
        self.horizon = horizon
        self.ghost_factor = ghost_factor
        self.depth_buckets = depth_buckets
        self.max_touches = max_touches
        self.reach = reach
        self._state: dict[bytes, list] = {}  # key -> [touches, last touch, class]
        self._stats: dict[Class, ClassStats] = {}
        self._ghost: OrderedDict[bytes, tuple[int, int, Class]] = OrderedDict()  # touches, last, class
        self._clock = 0
        self.residence = 0.0  # mean age (in touches) of evicted blocks

    def stats(self, cls: Class) -> ClassStats:
        found = self._stats.get(cls)
        if found is None:
            found = self._stats[cls] = ClassStats()
        return found

    def _classify(self, key: bytes, touches: int, fresh: bool) -> Class:
        view = self.view
        if view is None:
            return (min(touches, self.max_touches), False, 0)
        tail = fresh and touches == 1 and view.num_children(key) == 0
        return (min(touches, self.max_touches), tail, bisect_right(self.depth_buckets, view.depth(key)))

    def _touch(self, key: bytes, touches: int, fresh: bool) -> None:
        self._clock += 1
        cls = self._classify(key, touches, fresh)
        self._state[key] = [touches, self._clock, cls]
        if cls[1]:
            self._set(key, _TAIL_FIRST + self._clock)
            return
        stats = self.stats(cls)
        boost = self.horizon * self.residence * stats.p
        if stats.gap is not None:
            boost = min(boost, self.reach * stats.gap)
        self._set(key, self._clock + boost)

    def on_insert(self, key: bytes) -> None:
        if key in self._state:
            self.on_access(key)
            return
        touches = 1
        earlier = self._ghost.pop(key, None)
        if earlier is not None:  # came back: its eviction was a miss after all
            old_touches, last, cls = earlier
            stats = self.stats(cls)
            stats.evictions -= 1
            stats.reused(self._clock + 1 - last)
            touches = old_touches + 1
        self._touch(key, touches, fresh=True)

    def on_access(self, key: bytes) -> None:
        state = self._state.get(key)
        if state is None:
            return
        self._reactivate(key)
        touches, last, cls = state
        self.stats(cls).reused(self._clock + 1 - last)
        self._touch(key, touches + 1, fresh=False)

    def _gone(self, key: bytes, slot: Entry, evicted: bool) -> None:
        super()._gone(key, slot, evicted)
        touches, last, cls = self._state.pop(key)
        if not evicted:
            return
        self.stats(cls).evictions += 1
        age = self._clock - last
        self.residence += (age - self.residence) / (1024 if self.residence else 1)
        ghost = self._ghost
        ghost[key] = (touches, last, cls)
        if len(ghost) > self.ghost_factor * self._cap():
            ghost.popitem(last=False)
