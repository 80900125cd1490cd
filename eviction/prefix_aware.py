"""Prefix-aware eviction: recency plus a learned chance of reuse per kind of block.

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
learns ``p`` = reuses / (reuses + evictions) online (a ghost hit turns an
eviction into a reuse, so classes that are evicted early are not judged by
their early deaths). A block's priority, fixed at its last touch, is::

    last_touch + horizon * residence * p(class)

``residence`` is the running mean age of evicted blocks, so a block of a
class that is reused half of the time lives ``horizon/2`` cache lifetimes
longer than one that is never reused. Prompt tails seen once go first. Time
counts touches. All O(log n) (lazy heap); interior blocks wait parked until
they become leaf tails (see ``scan``), so the policy evicts deep, cold,
rarely-shared blocks first and keeps shared roots for as long as they pay.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict

from kvstore.eviction.heap import Entry, HeapPolicy

Class = tuple[int, bool, int]
_TAIL_FIRST = -1e18  # prompt tails seen once go before everything else


class PrefixAwarePolicy(HeapPolicy):
    name = "prefix"

    def __init__(
        self,
        capacity: int | None = None,
        horizon: float = 3.0,
        ghost_factor: float = 4.0,
        depth_buckets: tuple[int, ...] = (4, 16),  # depth >= 4, >= 16: buckets 1 and 2
        max_touches: int = 4,
    ) -> None:
        super().__init__(capacity)
        self.horizon = horizon
        self.ghost_factor = ghost_factor
        self.depth_buckets = depth_buckets
        self.max_touches = max_touches
        self._state: dict[bytes, list] = {}  # key -> [touches, last touch, class]
        self._stats: dict[Class, list[float]] = {}  # class -> [reuses, evictions]
        self._ghost: OrderedDict[bytes, tuple[int, Class]] = OrderedDict()
        self._clock = 0
        self.residence = 0.0  # mean age (in touches) of evicted blocks

    def reuse_probability(self, cls: Class) -> float:
        reuses, evictions = self._stats.get(cls, (1.0, 1.0))
        return reuses / (reuses + evictions)

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
        else:
            boost = self.horizon * self.residence * self.reuse_probability(cls)
            self._set(key, self._clock + boost)

    def on_insert(self, key: bytes) -> None:
        if key in self._state:
            self.on_access(key)
            return
        touches = 1
        earlier = self._ghost.pop(key, None)
        if earlier is not None:  # came back: its eviction was a miss after all
            old_touches, cls = earlier
            stats = self._stats.setdefault(cls, [1.0, 1.0])
            stats[0] += 1
            stats[1] -= 1
            touches = old_touches + 1
        self._touch(key, touches, fresh=True)

    def on_access(self, key: bytes) -> None:
        state = self._state.get(key)
        if state is None:
            return
        self._reactivate(key)
        self._stats.setdefault(state[2], [1.0, 1.0])[0] += 1
        self._touch(key, state[0] + 1, fresh=False)

    def _gone(self, key: bytes, slot: Entry, evicted: bool) -> None:
        super()._gone(key, slot, evicted)
        touches, last, cls = self._state.pop(key)
        if not evicted:
            return
        stats = self._stats.get(cls)
        if stats is None:
            stats = self._stats[cls] = [1.0, 1.0]
        stats[1] += 1
        age = self._clock - last
        self.residence += (age - self.residence) / (1024 if self.residence else 1)
        ghost = self._ghost
        ghost[key] = (touches, cls)
        if len(ghost) > self.ghost_factor * self._cap():
            ghost.popitem(last=False)
