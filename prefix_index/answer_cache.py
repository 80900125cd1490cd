"""AnswerCache: a tree's lookup answers for prompts that a caller keeps and asks about again.

A scheduler asks about the same waiting prompts step after step
(``lookup_many``); the daemon keeps each one in the connection's prompt
memo as a token array over its own ``bytes`` (``query_bytes.bytes_tokens``),
the same array object every time. Between two steps the tree usually has
not changed, so the answer has not either: walking 64 prompts of 4,096
tokens again (a dict probe keyed by a 1 KiB block and a 16 KiB ``memcmp``
each, ~3 µs in Python) is spent on a known result.

So the tree counts its mutations (``RadixTree.generation``: every insert,
removal and clear moves it on), and this cache keeps, per kept array, the
answer with the generation and ``extra`` it was computed under. An answer
is used only when both still match, so it is exactly what a walk would
return now: a stale answer is impossible, a changed tree costs one walk.

Keys are the arrays' identities, held through weak references: the cache
never keeps a prompt alive (when the memo drops an array, its entry is dead
and is overwritten or evicted), and an identity reused by a new object is
told apart because the weak reference no longer returns it. Only arrays over
a whole ``bytes`` object are cached (``cacheable``): a fresh array made for
one request would only churn the cache. Bounded by ``capacity`` entries;
when full it is emptied (a cheap, rare reset instead of LRU bookkeeping on
the hot path: the next step refills it).

The cache holds the answers of one generation only (a changed tree makes
every kept answer stale at once), one table per ``extra``::

    generation ──> { extra: { id(array): (weakref(array), answer) } }

so a batch whose prompts all have their answers is answered by a few
C-level passes (``map`` over the table, the weak references and ``is``),
no Python statement a prompt: 64 kept prompts in about 10 µs.

A scheduler's step usually repeats the last one exactly, and the prompt
memo then hands over the very same tuple of prompts (``PromptMemo.resolve``).
So the cache also keeps the answers of the last whole batch that came as a
tuple of kept prompts, found by the tuple's identity (``get_batch``): no pass
over the prompts at all, where even the C-level passes above touch every
prompt's objects (cold in the daemon's cache after the wait between steps,
they cost several times what they cost in a loop). The tuple is held
strongly (an identity must not be reused while it is a key): one batch per
tree, let go at the next batch or the next generation.
"""

from __future__ import annotations

import weakref
from operator import is_

import numpy as np

_deref = weakref.ref.__call__  # a weak reference's object (None once it is gone)
DEFAULT_CAPACITY = 4096  # entries: prompts a tree remembers answers for (bytes: ~100 each)


def cacheable(query: np.ndarray) -> bool:
    """An array that views a whole ``bytes`` object (a prompt a caller keeps, e.g. the memo)."""
    base = query.base
    return type(base) is bytes and len(base) == query.nbytes and query.flags.c_contiguous


class AnswerCache:
    """The kept answers of one tree generation; not thread-safe (the tree's owner serialises
    access)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self.generation = -1  # the generation whose answers the tables hold
        self._tables: dict[bytes, dict[int, tuple[weakref.ref, int]]] = {}
        self._count = 0  # entries in all tables
        # (batch, extra, answers, whole blocks asked) of the last batch kept whole
        self._batch: tuple[tuple, bytes, list[int], int] | None = None
        self.hits = 0

    def __len__(self) -> int:
        return self._count

    def _table(self, generation: int, extra: bytes) -> dict | None:
        """The table of ``extra`` under ``generation`` (None: nothing kept for it); a newer
        generation empties the cache first."""
        if generation != self.generation:
            self.clear()
            self.generation = generation
        return self._tables.get(extra)

    def get_batch(self, batch, generation: int, extra: bytes) -> tuple[list[int], int] | None:
        """The answers and whole blocks asked of ``batch`` when it is the very tuple kept by
        ``put_batch`` under this generation and extra, else None."""
        last = self._batch
        if last is None or last[0] is not batch or generation != self.generation \
                or last[1] != extra:
            return None
        self.hits += len(batch)
        return list(last[2]), last[3]

    def put_batch(self, batch: tuple, generation: int, extra: bytes, answers: list[int],
                  whole_blocks: int) -> None:
        """Keep the answers of ``batch``, a tuple of ``cacheable`` arrays."""
        self._table(generation, extra)  # a newer generation empties the cache first
        self._batch = (batch, extra, list(answers), whole_blocks)

    def get(self, query: np.ndarray, generation: int, extra: bytes) -> int | None:
        """The answer kept for ``query`` under this generation and extra, or None."""
        return self.get_many((query,), generation, extra)[0]

    def get_all(self, queries, generation: int, extra: bytes) -> list[int] | None:
        """The answer of every query when each has one kept (then each query is the very
        array it was computed for: an array the tree walked, so a valid token array,
        whatever the caller passed), else None. C-level passes only."""
        table = self._table(generation, extra)
        if table is None or not queries:
            return None if queries else []
        got = list(map(table.get, map(id, queries)))
        if None in got:
            return None
        refs, answers = zip(*got)
        if not all(map(is_, map(_deref, refs), queries)):
            return None  # an identity reused by another object
        self.hits += len(answers)
        return list(answers)

    def get_many(self, queries, generation: int, extra: bytes) -> list:
        """The answer kept for each query (None where there is none)."""
        known = self.get_all(queries, generation, extra)
        if known is not None:
            return known
        table = self._tables.get(extra, {})
        out = []
        for query in queries:
            entry = table.get(id(query))
            out.append(entry[1] if entry is not None and entry[0]() is query else None)
        self.hits += len(out) - out.count(None)
        return out

    def put(self, query: np.ndarray, generation: int, extra: bytes, answer: int) -> None:
        table = self._table(generation, extra)
        if table is None:
            table = self._tables[extra] = {}
        key = id(query)
        if key not in table:
            if self._count >= self.capacity:
                self.clear()
                table = self._tables[extra] = {}
            self._count += 1
        table[key] = (weakref.ref(query), answer)

    def clear(self) -> None:
        self._tables.clear()
        self._count = 0
        self._batch = None
