"""Replay a Mooncake-format request trace through the real radix tree and a policy.

Trace format (``../shared/data``): one JSON object a line with ``hash_ids``,
one id per 512-token block of the prompt, chained (equal ids at equal
positions mean an equal prefix). Each id becomes one token of a
``block_tokens = 1`` tree, so the tree does the prefix matching and the
chained xxh3 keys (``kvstore.block_keys``) name the blocks, exactly as for
real prompts.

Per request: match the prompt (the leading cached blocks are hits, every
block counts as requested), tell the policy about the hits, insert the rest,
lock the prompt's path, evict down to the capacity with ``may_evict =
tree.is_evictable`` (only unlocked leaf tails go), unlock. So after a request
all of its blocks are cached, as the hit-rate definition requires.

Two options follow the conversations (``benchmarks.conversations``):

* ``save_decode``: after a request, the full blocks of prompt + answer are
  stored as well (inserted, locked, evicted down to the capacity); they count
  as stored, never as requested.
* ``hints``: ``(delay,)`` sends ``Hint(session_end=True)`` for every block
  of a conversation (all its turns, answers included) ``delay`` seconds
  after its last turn arrived, by the trace's timestamps; the policy's
  ``clock`` is the trace's time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.conversations import answer_paths, link_turns, read_records, sessions
from kvstore import block_keys
from kvstore.eviction import EvictionPolicy, Hint
from kvstore.prefix_index import BlockMeta, RadixTree


@dataclass
class Trace:
    name: str
    tokens: list[np.ndarray]  # per request: one uint32 token per block
    keys: list[list[bytes]]  # per request: the chained key of each block
    times: list[float] = field(default_factory=list)  # per request: arrival (s)
    conversation: list[int] = field(default_factory=list)  # per request: its first turn's index
    last_turn: list[bool] = field(default_factory=list)  # per request: no next turn follows
    # per request: prompt + answer's full blocks, stored after it (save_decode), or None
    after_tokens: list[np.ndarray | None] | None = None
    after_keys: list[list[bytes] | None] | None = None
    measured_from: int = 0  # hits count from this request on (the ones before warm the cache)
    capacity_base: int | None = None  # blocks a capacity fraction refers to (default: unique_blocks)

    @property
    def requests(self) -> int:
        return len(self.tokens)

    @property
    def blocks_requested(self) -> int:
        return sum(len(t) for t in self.tokens[self.measured_from :])

    @property
    def measured(self) -> int:
        return self.requests - self.measured_from

    def capacity(self, fraction: float) -> int:
        return max(1, int(fraction * (self.capacity_base or self.unique_blocks)))

    @property
    def unique_blocks(self) -> int:
        return len({k for keys in self.keys for k in keys})


@dataclass
class ReplayResult:
    hits: int
    requested: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requested if self.requested else 0.0


def load_trace(
    path: str | Path, limit: int | None = None, part: str | None = None, save_decode: bool = False
) -> Trace:
    """The first ``limit`` requests (all by default) of a Mooncake trace file.

    ``part``: 'first' replays the first half only; 'second' replays the whole
    trace but counts hits on the second half only (the first half warms the
    cache). Either way capacities are fractions of the whole trace's unique
    blocks, and turns are linked over the whole trace. ``save_decode`` adds
    the answers' blocks (``benchmarks.conversations``).
    """
    records = read_records(path, limit=limit)
    tokens = [np.asarray(r.hash_ids, dtype=np.uint32) for r in records]
    keys = [block_keys(t, 1) for t in tokens]
    prev = link_turns(records)
    conversation, last_turn = sessions(prev)
    name = Path(path).name + (f" ({part} half)" if part else "")
    trace = Trace(name, tokens, keys, [r.time for r in records], conversation, last_turn)
    if save_decode:
        paths = answer_paths(records, prev)
        trace.after_tokens = [None if p is None else np.asarray(p, dtype=np.uint32) for p in paths]
        trace.after_keys = [None if t is None else block_keys(t, 1) for t in trace.after_tokens]
    if part is not None:
        half = len(records) // 2
        trace.capacity_base = trace.unique_blocks
        if part == "first":
            trace.tokens, trace.keys = trace.tokens[:half], trace.keys[:half]
            trace.times, trace.conversation = trace.times[:half], trace.conversation[:half]
            trace.last_turn = trace.last_turn[:half]
            if save_decode:
                trace.after_tokens, trace.after_keys = trace.after_tokens[:half], trace.after_keys[:half]
        elif part == "second":
            trace.measured_from = half
        else:
            raise ValueError(f"part must be 'first' or 'second', not {part!r}")
    return trace


def _answer_blocks(trace: Trace, i: int) -> list[bytes]:
    """Keys of request ``i``'s answer blocks (those past its full prompt blocks)."""
    keys = trace.after_keys[i] if trace.after_keys else None
    if keys is None:
        return []
    prompt, shared = trace.keys[i], 0
    limit = min(len(prompt), len(keys))
    while shared < limit and keys[shared] == prompt[shared]:
        shared += 1
    return keys[shared:]


def next_use_schedule(trace: Trace) -> dict[bytes, list[float]]:
    """For each key, the times (request index; an answer stored after request i: i + 0.5)
    at which the replay touches it (OPT's future)."""
    schedule: dict[bytes, list[float]] = {}
    for i, keys in enumerate(trace.keys):
        for k in keys:
            schedule.setdefault(k, []).append(i)
        for k in _answer_blocks(trace, i):
            schedule.setdefault(k, []).append(i + 0.5)
    return schedule


def infinite_cache_hit_rate(trace: Trace) -> float:
    """Hit rate with unlimited capacity: only first touches miss (the ceiling)."""
    seen: set[bytes] = set()
    hits = 0
    for i, keys in enumerate(trace.keys):
        n = 0
        while n < len(keys) and keys[n] in seen:
            n += 1
        if i >= trace.measured_from:
            hits += n
        seen.update(keys)
        if trace.after_keys and trace.after_keys[i] is not None:
            seen.update(trace.after_keys[i])
    return hits / trace.blocks_requested


def session_end_hints(trace: Trace, delay: float) -> list[tuple[float, int, list[bytes]]]:
    """``(time, after request, keys)``: each conversation's blocks, ``delay`` s after its last turn."""
    blocks: dict[int, list[bytes]] = {}
    for i, conv in enumerate(trace.conversation):
        mine = blocks.setdefault(conv, [])
        mine.extend(trace.keys[i])
        if trace.after_keys and trace.after_keys[i] is not None:
            mine.extend(trace.after_keys[i])
    out = [
        (trace.times[i] + delay, i, list(dict.fromkeys(blocks[trace.conversation[i]])))
        for i, last in enumerate(trace.last_turn)
        if last
    ]
    out.sort(key=lambda h: (h[0], h[1]))
    return out


def replay(
    trace: Trace,
    policy: EvictionPolicy,
    capacity: int,
    progress: Callable[[int], object] | None = None,
    hint_delay: float | None = None,
) -> ReplayResult:
    """Run every request of ``trace`` through a tree of ``capacity`` blocks
    (``hint_delay``: send session-end hints that many seconds after a last turn)."""
    tree = RadixTree(block_tokens=1, clock=_Counter())
    policy.bind(tree)
    now = [0.0]
    policy.clock = lambda: now[0]
    hints = session_end_hints(trace, hint_delay) if hint_delay is not None else []
    heapq.heapify(hints)
    end_hint = Hint(session_end=True)
    hits = requested = evictions = 0
    for i, (tokens, keys) in enumerate(zip(trace.tokens, trace.keys)):
        if trace.times:
            now[0] = trace.times[i]
        while hints and (hints[0][0], hints[0][1]) < (now[0], i):
            policy.on_hint(heapq.heappop(hints)[2], end_hint)
        match = tree.match(tokens, touch=True)
        cached = len(match.blocks)
        if i >= trace.measured_from:
            hits += cached
            requested += len(keys)
        for block in match.blocks:
            policy.on_access(block.key)
        if cached < len(keys):
            metas = match.blocks + [BlockMeta(key=k, size=1) for k in keys[cached:]]
            inserted = tree.insert(tokens, metas)
            for block in inserted.added:
                policy.on_insert(block.key)
            tree.lock(inserted.node)
            evictions += _evict_to(tree, policy, capacity)
            tree.unlock(inserted.node)
        if trace.after_keys and trace.after_keys[i] is not None:
            evictions += _store_answer(tree, policy, capacity, trace, i)
        if progress is not None and i % 512 == 511:
            progress(512)
    if progress is not None:
        progress(len(trace.keys) % 512)
    return ReplayResult(hits, requested, evictions)


def _store_answer(tree: RadixTree, policy: EvictionPolicy, capacity: int, trace: Trace, i: int) -> int:
    """Store prompt + answer's full blocks after request ``i``: one touch per answer block."""
    tokens, keys = trace.after_tokens[i], trace.after_keys[i]
    answer = set(_answer_blocks(trace, i))
    match = tree.match(tokens)
    for block in match.blocks:
        if block.key in answer:
            policy.on_access(block.key)
    if len(match.blocks) == len(keys):
        return 0
    metas = match.blocks + [BlockMeta(key=k, size=1) for k in keys[len(match.blocks):]]
    inserted = tree.insert(tokens, metas)
    for block in inserted.added:
        policy.on_insert(block.key)
    tree.lock(inserted.node)
    evicted = _evict_to(tree, policy, capacity)
    tree.unlock(inserted.node)
    return evicted


def _evict_to(tree: RadixTree, policy: EvictionPolicy, capacity: int) -> int:
    """Evict one block at a time: removing a leaf tail can make its parent the
    next victim, which a batch asked for beforehand could not take into account."""
    evicted = 0
    may_evict = tree.is_evictable
    while len(tree) > capacity:
        victims = policy.victims(1, may_evict)
        if not victims:  # everything left is locked: the prompt alone exceeds capacity
            break
        tree.remove(victims[0])
        policy.on_remove(victims[0])
        evicted += 1
    return evicted


class _Counter:
    """A clock for the tree that ticks once per call (deterministic replays)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now
