"""Conversation-shaped eviction: ``prefix`` plus the turn number and diverged tails.

A conversation grows by turns: each turn's prompt is the previous prompt's
full blocks, the answer and a new question, inserted as one *run* of new
blocks below the block where it left the tree. The policy follows the runs
it is told about (a run starts when an insert's parent is not the block
inserted just before) and adds two features to ``prefix``'s classes:

* **turn**: a run's turn is its parent run's turn + 1 (capped at
  ``max_turn``). The chance that a conversation gets another turn grows
  with its turn number (0.31 after the first turn of the Mooncake
  conversation trace, 0.42, 0.51, 0.59 after the fourth, about 0.68 from
  the sixth), and the class statistics learn it online.
* **diverged**: when a run starts below block ``p`` of an earlier run, that
  run's blocks past ``p`` are a tail the new turn did not take (the partial
  last block of the previous prompt, or the end of a prompt the user edited
  or cut). They are classed again, as diverged, and keep their last touch;
  the class statistics learn how often such tails come back (rarely), so a
  shared system prompt that every new conversation leaves is judged by what
  happens to it, not by a rule.

Everything else (ghosts, learned reuse probability and distance, prompt
tails first, parking) is ``prefix``'s.
"""

from __future__ import annotations

from kvstore.eviction.prefix_aware import PrefixAwarePolicy


class ConversationPolicy(PrefixAwarePolicy):
    name = "conversation"

    def __init__(
        self,
        capacity: int | None = None,
        max_turn: int = 6,
        turns: bool = True,
        diverged: bool = True,
        diverged_first: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(capacity, **kwargs)
        self.max_turn = max_turn
        self.turns, self.diverged, self.diverged_first = turns, diverged, diverged_first
        self._run_of: dict[bytes, list] = {}  # resident key -> its run [turn, keys...]
        self._diverged: set[bytes] = set()
        self._last_inserted: bytes | None = None

    def _classify(self, key: bytes, touches: int, fresh: bool):
        base = super()._classify(key, touches, fresh)
        run = self._run_of.get(key)
        turn = (run[0] if run else 1) if self.turns else 0
        return (*base, turn, key in self._diverged)

    def on_insert(self, key: bytes) -> None:
        if key in self._state:
            self.on_access(key)
            return
        view = self.view
        parent = view.parent(key) if view is not None and callable(getattr(view, "parent", None)) else None
        run = self._run_of.get(parent) if parent is not None else None
        if run is not None and parent == self._last_inserted:
            run.append(key)  # the same insert continues
        else:
            turn = min(run[0] + 1, self.max_turn) if run is not None else 1
            if run is not None and self.diverged:
                self._diverge(run, parent)
            run = [turn, key]
        self._run_of[key] = run
        self._last_inserted = key
        super().on_insert(key)

    def on_access(self, key: bytes) -> None:
        self._last_inserted = None
        super().on_access(key)

    def _diverge(self, run: list, parent: bytes) -> None:
        """A new turn left ``run`` at ``parent``: re-class the blocks of ``run`` past it."""
        keys = run[1:]
        try:
            cut = keys.index(parent) + 1
        except ValueError:
            return
        for key in keys[cut:]:
            state = self._state.get(key)
            if state is None or key in self._diverged:
                continue
            self._diverged.add(key)
            if key not in self._entry or key in self._doomed or key in self._held or key in self._pending:
                continue
            touches, last, _ = state
            cls = self._classify(key, touches, False)
            state[2] = cls
            self._reactivate(key)
            stats = self.stats(cls)
            boost = self.horizon * self.residence * stats.p
            if stats.gap is not None:
                boost = min(boost, self.reach * stats.gap)
            if self.diverged_first and self.view.depth(parent) >= 2:
                boost = -1e17  # after the prompt tails, before everything else
            self._set(key, last + boost)

    def _gone(self, key, slot, evicted: bool) -> None:
        super()._gone(key, slot, evicted)
        self._diverged.discard(key)
        run = self._run_of.pop(key, None)
        if run is not None and run[-1] == key:
            run.pop()
