"""Moving data when the membership changes: a journal of stored prefixes and a paced mover.

A node cannot list its prefixes from its store's keys (a key is a hash: it
does not give the tokens back), so it keeps a ``PrefixJournal``: the last
``limit`` prefixes written here (by clients, and by peers that forwarded or
replicated them), newest last, one entry per (namespace, extra, tokens),
holding at most ``max_tokens`` tokens in all (16 Mi tokens: 64 MiB as int32).

When a node joins, each node walks its journal and pushes the prefixes that
the newcomer now owns to it (``ClusterNode._rebalance``), after asking the
newcomer how much it holds, at no more than ``rate`` bytes a second
(``Pacer``), so reads after a join hit there without a first-read pull. When
a node leaves, the replicas of a hot prefix push it to the node that takes
the lost replica's place, so the prefix keeps its replica count.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import xxhash

from kvstore.namespace_spec import NamespaceSpec


@dataclass(frozen=True)
class Stored:
    spec: NamespaceSpec
    ns: bytes
    tokens: np.ndarray
    extra: bytes


class PrefixJournal:
    def __init__(self, limit: int = 50_000, max_tokens: int = 16 << 20):
        self.limit = limit
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: OrderedDict[tuple, Stored] = OrderedDict()

    def add(self, spec: NamespaceSpec, ns: bytes, tokens, extra: bytes) -> None:
        if self.limit <= 0:
            return
        toks = np.array(tokens)  # a copy (same dtype): the caller's buffer may be reused
        key = (ns, extra, xxhash.xxh3_128_digest(toks.tobytes()))
        old = self._entries.pop(key, None)
        if old is not None:
            self.tokens -= len(old.tokens)
        self._entries[key] = Stored(spec, ns, toks, extra)
        self.tokens += len(toks)
        while self._entries and (len(self._entries) > self.limit or self.tokens > self.max_tokens):
            _, gone = self._entries.popitem(last=False)
            self.tokens -= len(gone.tokens)

    def discard(self, ns: bytes, tokens, extra: bytes) -> None:
        """Forget every entry that starts with ``tokens`` (a delete)."""
        toks = np.asarray(tokens)
        for key in [k for k, e in self._entries.items()
                    if k[0] == ns and k[1] == extra and len(e.tokens) >= len(toks)
                    and np.array_equal(e.tokens[: len(toks)], toks)]:
            self.tokens -= len(self._entries.pop(key).tokens)

    def entries(self) -> list[Stored]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class Pacer:
    """At most ``rate`` bytes a second, on average, for the awaited ``spend`` calls."""

    def __init__(self, rate: float):
        self.rate = rate
        self._next = time.monotonic()

    async def spend(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._next = max(self._next, now) + nbytes / self.rate
        wait = self._next - now
        if wait > 0:
            await asyncio.sleep(wait)
