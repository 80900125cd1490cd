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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvstore import block_keys
from kvstore.eviction import EvictionPolicy
from kvstore.prefix_index import BlockMeta, RadixTree


@dataclass
class Trace:
    name: str
    tokens: list[np.ndarray]  # per request: one uint32 token per block
    keys: list[list[bytes]]  # per request: the chained key of each block

    @property
    def requests(self) -> int:
        return len(self.tokens)

    @property
    def blocks_requested(self) -> int:
        return sum(len(t) for t in self.tokens)

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


def load_trace(path: str | Path, limit: int | None = None) -> Trace:
    """The first ``limit`` requests (all by default) of a Mooncake trace file."""
    tokens = []
    with open(path) as f:
        for line in f:
            if limit is not None and len(tokens) >= limit:
                break
            if line.strip():
                tokens.append(np.asarray(json.loads(line)["hash_ids"], dtype=np.uint32))
    keys = [block_keys(t, 1) for t in tokens]
    return Trace(Path(path).name, tokens, keys)


def next_use_schedule(trace: Trace) -> dict[bytes, list[int]]:
    """For each key, the indices of the requests that touch it (OPT's future)."""
    schedule: dict[bytes, list[int]] = {}
    for i, keys in enumerate(trace.keys):
        for k in keys:
            schedule.setdefault(k, []).append(i)
    return schedule


def infinite_cache_hit_rate(trace: Trace) -> float:
    """Hit rate with unlimited capacity: only first touches miss (the ceiling)."""
    seen: set[bytes] = set()
    hits = 0
    for keys in trace.keys:
        n = 0
        while n < len(keys) and keys[n] in seen:
            n += 1
        hits += n
        seen.update(keys)
    return hits / trace.blocks_requested


def replay(
    trace: Trace,
    policy: EvictionPolicy,
    capacity: int,
    progress: Callable[[int], object] | None = None,
) -> ReplayResult:
    """Run every request of ``trace`` through a tree of ``capacity`` blocks."""
    tree = RadixTree(block_tokens=1, clock=_Counter())
    policy.bind(tree)
    hits = requested = evictions = 0
    for i, (tokens, keys) in enumerate(zip(trace.tokens, trace.keys)):
        match = tree.match(tokens, touch=True)
        cached = len(match.blocks)
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
        if progress is not None and i % 512 == 511:
            progress(512)
    if progress is not None:
        progress(len(trace.keys) % 512)
    return ReplayResult(hits, requested, evictions)


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
