"""Session-admission eviction: keep fewer conversations, long enough for their next turn.

Under LRU every conversation stays about as long as the cache takes to turn
over. On the Mooncake conversation trace at 2 % of its unique blocks that is
about 50 s, while the median gap to a next turn is about 120 s: nearly every
conversation is gone before it comes back. Keeping a *subset* of the
conversations for a longer ``keep`` horizon (and letting the rest go first)
serves more next turns with the same room whenever the share of next turns
that arrive within ``keep`` grows faster than ``keep`` itself.

What the policy learns online (all from what the store sees):

* **the gaps between turns**, in touches: a block's first reuse (or the
  return of an evicted block, through a ghost list of ``ghost_factor`` x
  capacity keys) is a next turn. From the last ``samples`` gaps it picks
  ``keep = argmax_B F(B) / B`` over ``B >= capacity`` (``F``: the share of
  seen gaps at most ``B``): the horizon that serves the most next turns per
  block of room. When the best horizon is the capacity itself, every
  conversation is kept and the order is LRU's.
* **the share of new blocks per turn class** (the turn number of a
  conversation, followed as in ``conversation``: a run inserted below an
  earlier run at depth >= 2 is its next turn). The chance of a next turn
  grows with the turn number, so the room for ``fill * capacity`` blocks
  kept ``keep`` touches is given to the latest turns first; the marginal
  class gets a fraction of its conversations, chosen by a hash of the
  conversation's first block (so a conversation is kept or not as a whole,
  and stays kept at its later turns).

A block's priority is its last touch, plus ``keep`` when its conversation is
admitted; a prompt's partial last block seen once goes first (``prefix``'s
rule), a diverged tail is ranked as in ``conversation``. Blocks a request
reads again are re-ranked by the request's turn once its new run starts.
With everything admitted (large caches) the order is LRU's plus the
prompt-tails-first rule. O(log n) per operation (lazy heap); the horizon is
recomputed every ``samples // 8`` gaps (a sort of ``samples`` values,
amortised O(log samples) per gap).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from kvstore.eviction.conversation import ConversationPolicy
from kvstore.eviction.prefix_aware import _TAIL_FIRST

_SCALE = float(1 << 64)


def _unit(key: bytes) -> float:
    """A fixed pseudo-random number in [0, 1) for a key (keys are hashes)."""
    return int.from_bytes(key[:8].ljust(8, b"\0"), "little") / _SCALE


class SessionPolicy(ConversationPolicy):
    name = "session"

    def __init__(
        self,
        capacity: int | None = None,
        fill: float = 0.8,
        stretch: float = 1.0,
        samples: int = 2048,
        ghost_factor: float = 4.0,
        memory: float = 16.0,
        per_conversation: bool = True,
        classes: bool = True,
        blend: float = 1.0,
        late_full: float = 0.3,
        turns: bool = False,
        diverged: bool = False,
        rerank: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(capacity, ghost_factor=ghost_factor, turns=turns, diverged=diverged, **kwargs)
        self.memory, self.per_conversation, self.rerank = memory, per_conversation, rerank
        self.fill, self.stretch, self.samples, self.classes = fill, stretch, samples, classes
        self.blend, self.late_full = blend, late_full
        self._fitted = False  # until the first fit: keep = capacity, full class boost
        self.late = 1.0  # share of seen next-turn gaps longer than the capacity (in touches)
        self._gaps: deque[int] = deque(maxlen=samples)
        self._new_gaps = 0
        self.keep = 0.0  # touches an admitted block stays past its last touch (0: not learned yet)
        self._admit: list[float] = [1.0] * (self.max_turn + 1)  # per turn: share of conversations kept
        self._inserts = [0.0] * (self.max_turn + 1)  # decayed new blocks per turn
        self._ticks = 0.0  # decayed touches
        self._path: list[bytes] = []  # blocks the current request read, root first
        # conversation -> (its latest turn, when it started), the last ``memory`` x capacity
        self._convs: OrderedDict[float, tuple[int, int]] = OrderedDict()

    # -- learning -------------------------------------------------------------
    def _gap(self, gap: int) -> None:
        self._gaps.append(gap)
        self._new_gaps += 1
        if self._new_gaps >= max(self.samples // 8, 1):
            self._new_gaps = 0
            self._refit()

    def _refit(self) -> None:
        cap = self._cap()
        gaps = sorted(self._gaps)
        best, keep = None, float(cap)
        for i, g in enumerate(gaps):
            if g < cap:
                continue
            density = (i + 1) / g
            if best is None or density > best:
                best, keep = density, float(g)
        if best is not None and keep > cap:  # against keeping everything ``cap`` touches (LRU)
            at_cap = sum(1 for g in gaps if g <= cap) / cap
            if at_cap >= best:
                keep = float(cap)
        self.keep = keep * self.stretch
        self._fitted = True
        self.late = sum(1 for g in gaps if g > cap) / max(len(gaps), 1)
        total = sum(self._inserts) or 1.0
        rate = total / max(self._ticks, 1.0)  # new blocks per touch
        if keep * self.fill < cap:  # about LRU's own horizon: keep every conversation (LRU)
            share = 1.0
        else:  # room for ``fill * cap`` new blocks kept ``keep`` touches
            share = min(1.0, self.fill * cap / max(rate * self.keep, 1e-9))
        admit = [0.0] * len(self._inserts)
        left = share
        for turn in range(len(self._inserts) - 1, 0, -1):
            part = self._inserts[turn] / total
            if part <= 0:
                admit[turn] = 1.0
                continue
            admit[turn] = max(0.0, min(1.0, left / part))
            left -= part * admit[turn]
        self._admit = admit

    def _count_insert(self, turn: int) -> None:
        decay = 1.0 - 1.0 / (16 * self._cap())
        self._inserts = [x * decay for x in self._inserts]
        self._inserts[turn] += 1.0

    def _admitted(self, run: list | None, turn: int | None = None) -> bool:
        if run is None:
            return True
        turn = run[0] if turn is None else min(turn, self.max_turn)
        return run[1] < self._admit[turn]

    # -- order ----------------------------------------------------------------
    def _touch(self, key: bytes, touches: int, fresh: bool, turn: int | None = None) -> None:
        self._clock += 1
        self._ticks = self._ticks * (1.0 - 1.0 / (16 * self._cap())) + 1.0
        cls = self._classify(key, touches, fresh)
        self._state[key] = [touches, self._clock, cls]
        if cls[1]:
            self._set(key, _TAIL_FIRST + self._clock)
            return
        if key in self._diverged:
            stats = self.stats(cls)
            boost = self.horizon * self.residence * stats.p
            if stats.gap is not None:
                boost = min(boost, self.reach * stats.gap)
            self._set(key, self._clock + boost)
            return
        run = self._run_of.get(key)
        boost = self._boost(cls) if self._admitted(run, turn) else 0.0
        self._set(key, self._clock + boost)

    def _boost(self, cls) -> float:
        """An admitted block's lead: ``keep``, plus ``prefix``'s learned class boost
        weighted by the share of next turns that come later than LRU would keep them."""
        keep = self.keep if self._fitted else float(self._cap())
        if not self.classes:
            return keep
        stats = self.stats(cls)
        boost = self.horizon * self.residence * stats.p
        if stats.gap is not None:
            boost = min(boost, self.reach * stats.gap)
        return keep + min(1.0, self.late / self.late_full) ** self.blend * boost

    def on_insert(self, key: bytes) -> None:
        if key in self._state:
            self.on_access(key)
            return
        view = self.view
        parent = view.parent(key) if view is not None and callable(getattr(view, "parent", None)) else None
        run = self._run_of.get(parent) if parent is not None else None
        new_run = not (run is not None and parent == self._last_inserted)
        if not new_run:
            run.append(key)
        else:
            if run is not None and view.depth(parent) >= 2:  # a next turn of that conversation
                u = run[1]
            else:  # below nothing or a shared first block: a new conversation, or one that
                u = _unit(key)  # comes back after its blocks left (same first block, same u)
            convs = self._convs
            seen = convs.pop(u, None)
            if seen is None:
                turn = 1
            else:
                turn = min(seen[0] + 1, self.max_turn)
                if self.per_conversation:
                    self._gap(self._clock + 1 - seen[1])
            convs[u] = (turn, self._clock + 1)
            if len(convs) > self.memory * self._cap():
                convs.popitem(last=False)
            if run is not None and self.diverged:
                self._diverge(run, parent)
            run = [turn, u, key]
        self._run_of[key] = run
        self._last_inserted = key
        self._count_insert(run[0])
        earlier = self._ghost.get(key)
        if not self.per_conversation and earlier is not None and earlier[0] == 1:
            self._gap(self._clock + 1 - earlier[1])
        super(ConversationPolicy, self).on_insert(key)
        if new_run and self.rerank and self._path and parent == self._path[-1]:
            admitted = run[1] < self._admit[run[0]]
            for k in self._path:  # what this request read belongs to its turn now
                state = self._state.get(k)
                if state is None or k not in self._entry or k in self._doomed or k in self._held:
                    continue
                if k in self._pending or k in self._diverged or state[2][1]:
                    continue
                self._reactivate(k)
                self._set(k, state[1] + (self._boost(state[2]) if admitted else 0.0))
        if new_run:
            self._path = []

    def on_access(self, key: bytes) -> None:
        state = self._state.get(key)
        if state is None:
            return
        view = self.view
        if self._path and view is not None and callable(getattr(view, "parent", None)):
            if view.parent(key) != self._path[-1]:
                self._path = []
        self._path.append(key)
        if not self.per_conversation and state[0] == 1 and view is not None and view.depth(key) >= 2:
            self._gap(self._clock + 1 - state[1])
        super().on_access(key)
