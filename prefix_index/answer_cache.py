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
"""

from __future__ import annotations

import weakref

import numpy as np

DEFAULT_CAPACITY = 4096  # entries: prompts a tree remembers answers for (bytes: ~100 each)


def cacheable(query: np.ndarray) -> bool:
    """An array that views a whole ``bytes`` object (a prompt a caller keeps, e.g. the memo)."""
    base = query.base
    return type(base) is bytes and len(base) == query.nbytes and query.flags.c_contiguous


class AnswerCache:
    """id(array) -> (weak reference, generation, extra, answer); not thread-safe (the tree's owner
    serialises access)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._entries: dict[int, tuple] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: np.ndarray, generation: int, extra: bytes) -> int | None:
        """The answer kept for ``query`` under this generation and extra, or None."""
        return self.get_many((query,), generation, extra)[0]

    def get_many(self, queries, generation: int, extra: bytes) -> list:
        """The answer kept for each query (None where there is none), in one loop."""
        entries, out = self._entries, []
        for query in queries:
            entry = entries.get(id(query))
            valid = entry is not None and entry[0]() is query and entry[1] == generation \
                and entry[2] == extra
            out.append(entry[3] if valid else None)
        self.hits += len(out) - out.count(None)
        return out

    def put(self, query: np.ndarray, generation: int, extra: bytes, answer: int) -> None:
        entries = self._entries
        key = id(query)
        if key not in entries and len(entries) >= self.capacity:
            entries.clear()
        entries[key] = (weakref.ref(query), generation, extra, answer)

    def clear(self) -> None:
        self._entries.clear()
