"""The prompt memo of ``lookup_many``: a prompt sent once on a connection travels as a digest.

A scheduler asks about the same waiting requests step after step; sending
each one's tokens every step (64 prompts of 4,096 tokens: 1 MiB a call) costs
more than the lookups themselves. So each connection has a memo:

* the daemon's ``PromptMemo`` (one per ``Session``): digest -> token array,
  an LRU bounded by its tokens (``Limits.max_memo_tokens``, counted against
  nothing else; each prompt held in its own ``bytes``: ``PromptMemo``).
  A memo request names every prompt by its digest and says
  which prompts come with their tokens (payload segments): those are
  (re)inserted, the others are resolved from the memo. A digest it does not
  hold is ``UnknownPrompt`` (and the memo is emptied, as the client's mirror
  will be);
* the client's ``PromptMirror`` (one per connection, emptied on reconnect):
  the same LRU over the same bound, holding digests and lengths only. The
  client plans each request on it, in the order the daemon processes it, so
  it sends a digest alone exactly when the daemon still holds its tokens.

Both walk one batch in order with the same ``TokenLRU``, so the mirror
predicts the memo; when it cannot (the daemon restarted, a request failed)
the answer is ``UnknownPrompt``, never a wrong hit: the client empties its
mirror and resends that request with every prompt's tokens. The daemon does
not check a digest against its tokens: a client that lies confuses only its
own answers (the memo belongs to one connection; nothing crosses them).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence
from operator import itemgetter
from typing import Generic, TypeVar

import numpy as np

from kvstore.errors import UnknownPrompt
from kvstore.prefix_index.query_bytes import bytes_tokens
from kvstore.transport.digest_batch import DigestBatch

V = TypeVar("V")


class PromptBatch(tuple):
    """The token arrays of one ``lookup_many``'s prompts, in order (a tuple: the memo can
    give the same batch out again), with ``tokens``: their lengths added up."""

    tokens: int

    def __new__(cls, arrays) -> PromptBatch:
        batch = super().__new__(cls, arrays)
        batch.tokens = sum(map(len, batch))
        return batch


class TokenLRU(Generic[V]):
    """digest -> value, least recently used first out, bounded by the entries' tokens.

    An entry costs its prompt's tokens (at least 1, so empty prompts are
    bounded too); a prompt costlier than the whole bound is never held.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.tokens = 0  # the cost of the entries held
        self._entries: OrderedDict[bytes, tuple[int, V]] = OrderedDict()
        # (digests' blob, result) of the last batch walked whole with every prompt held,
        # while nothing changed since: the same batch again moves nothing (each of its keys
        # is already most recent, in its order) and gets the same result (``repeat``)
        self._repeat: tuple[bytes, object] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def put(self, key: bytes, length: int, value: V) -> None:
        """Hold ``value`` (most recent), evicting the least recent until it fits."""
        self.tokens = self._put(key, length, value, self.tokens)

    def _put(self, key: bytes, length: int, value: V, tokens: int) -> int:
        """``put`` given the tokens held (``self.tokens`` as a batch's loop keeps it in a
        local): the tokens held after."""
        cost = length if length > 0 else 1
        entries = self._entries
        self._repeat = None
        old = entries.pop(key, None)
        if old is not None:
            tokens -= old[0]
        if cost > self.max_tokens:
            return tokens
        tokens += cost
        while tokens > self.max_tokens:
            tokens -= entries.popitem(last=False)[1][0]
        entries[key] = (cost, value)
        return tokens

    def fresh(self, keys: Sequence[bytes]) -> bool:
        """Whether ``keys`` are distinct and none is held (``_put_new`` may take them)."""
        entries = self._entries
        return not any(map(entries.__contains__, keys)) and len(set(keys)) == len(keys)

    def _put_new(self, keys: Sequence[bytes], lengths, values) -> None:
        """``put`` of each of ``fresh`` keys in order: every entry goes in, then the least
        recent go until the rest fit. What the puts one by one leave (each keeps the longest
        run of most recent entries that fits: no key goes out again to make room after the
        fact), with one eviction pass instead of one a put."""
        entries, bound = self._entries, self.max_tokens
        self._repeat = None
        tokens = self.tokens
        for key, length, value in zip(keys, lengths, values):
            cost = length if length > 0 else 1
            if cost <= bound:
                entries[key] = (cost, value)
                tokens += cost
        while tokens > bound:
            tokens -= entries.popitem(last=False)[1][0]
        self.tokens = tokens

    def get(self, key: bytes) -> V | None:
        """The value held for ``key`` (now the most recent), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._repeat = None
        self._entries.move_to_end(key)
        return entry[1]

    def repeat(self, batch: DigestBatch):
        """The result kept for ``batch`` when it is the last batch walked whole with every
        prompt held and nothing changed since, else None."""
        last = self._repeat
        return last[1] if last is not None and last[0] == batch.blob else None

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0
        self._repeat = None


def _own(tokens: np.ndarray) -> np.ndarray:
    """``tokens`` copied into their own ``bytes``: walks take them as they are."""
    return bytes_tokens(tokens.tobytes())


class PromptMemo(TokenLRU[np.ndarray]):
    """The daemon's memo of one connection: digest -> the token array sent with it.

    A carried prompt is copied out of its request's buffer into its own
    ``bytes`` as it arrives (``bytes_tokens``): the copy a plain lookup makes
    anyway to walk the tree (``query_bytes``), made here once, so the walks
    take those bytes as they are, the tree keeps their answers
    (``AnswerCache``), the request's buffer is let go at once, and the memory
    held is the prompts' own: ``max_tokens`` x 4 bytes at most.
    """

    def resolve(self, batch: DigestBatch, carried: bytes,
                arrays: Sequence[np.ndarray]) -> PromptBatch:
        """Every prompt's tokens, in order: ``arrays`` (the segments) for the prompts whose
        ``carried`` flag is 1 (held from now on), the memo's for the others.
        ``UnknownPrompt`` (the memo emptied) for a digest it does not hold.

        A batch named whole by digests that repeats the last one (a scheduler's next step,
        nothing sent in between) gets the very same ``PromptBatch`` back, so that what the
        answers are kept under downstream (``AnswerCache``'s batch) is found by identity,
        with no pass over its prompts."""
        if not arrays:
            again = self.repeat(batch)
            if again is not None:
                return again
            out = self._named(batch.keys)
            self._repeat = (batch.blob, out)
            return out
        owned = list(map(_own, arrays))
        digests = batch.keys
        if len(owned) == len(digests) and self.fresh(digests):  # all new: one eviction pass
            self._put_new(digests, map(len, owned), owned)
            return PromptBatch(owned)
        return self._walk(digests, carried, owned)

    def _named(self, digests: list[bytes]) -> PromptBatch:
        """``resolve`` of a batch that carries no tokens (C-level passes)."""
        entries = self._entries
        got = list(map(entries.get, digests))
        if None in got:
            return self._walk(digests, bytes(len(digests)), ())  # raises UnknownPrompt
        deque(map(entries.move_to_end, digests), maxlen=0)  # ``get`` of each, in order
        return PromptBatch(map(itemgetter(1), got))

    def _walk(self, digests: list[bytes], carried: bytes,
              arrays: Sequence[np.ndarray]) -> PromptBatch:
        """``resolve``, one prompt at a time, ``arrays`` already in their own bytes."""
        out: list[np.ndarray] = []
        segments = iter(arrays)
        entries, put = self._entries, self._put
        tokens = self.tokens
        for i, (key, flag) in enumerate(zip(digests, carried)):
            if flag:
                value = next(segments)
                tokens = put(key, len(value), value, tokens)
                out.append(value)
                continue
            entry = entries.get(key)
            if entry is None:
                self.clear()
                raise UnknownPrompt(f"lookup_many: prompt {i}'s digest is not in this "
                                    "connection's memo (never sent here, or evicted): "
                                    "send its tokens")
            entries.move_to_end(key)  # ``get``, inline: this loop runs once a prompt a step
            out.append(entry[1])
        self.tokens = tokens
        return PromptBatch(out)


class PromptMirror(TokenLRU[bool]):
    """The client's mirror of its connection's ``PromptMemo``: which digests it holds.

    ``generation`` is the connection's (``Connection.generation``) the mirror
    describes: a reconnect starts a new session with an empty memo.
    """

    def __init__(self, max_tokens: int, generation: int):
        super().__init__(max_tokens)
        self.generation = generation

    def plan(self, batch: DigestBatch, arrays: Sequence[np.ndarray],
             resend: bool = False) -> bytes:
        """The ``carried`` flags of a request naming ``digests`` of ``arrays`` (1: send the
        tokens), as the daemon will walk it: a prompt it holds goes as its digest alone
        (``resend``: none does, every prompt's tokens go)."""
        entries, put = self._entries, self._put
        if not resend and self.repeat(batch) is not None:  # the last step's batch again
            return bytes(len(batch))
        digests = batch.keys
        if not resend and all(map(entries.__contains__, digests)):  # a scheduler's next step
            deque(map(entries.move_to_end, digests), maxlen=0)  # each now the most recent
            self._repeat = (batch.blob, True)
            return bytes(len(digests))
        if self.fresh(digests):  # all new (or resent to an emptied memo): one eviction pass
            self._put_new(digests, map(len, arrays), itertools.repeat(True))
            return b"\x01" * len(digests)
        carried = bytearray(len(digests))
        tokens = self.tokens
        for i, key in enumerate(digests):
            if not resend and key in entries:
                entries.move_to_end(key)  # held: now the most recent, as the memo's ``get``
                continue
            carried[i] = 1
            tokens = put(key, len(arrays[i]), True, tokens)
        self.tokens = tokens
        return bytes(carried)


def advertised_bound(hello: dict) -> int:
    """The daemon's ``max_memo_tokens`` from its hello reply's limits (0: no memo, as
    from a daemon that predates it or has it off)."""
    limits = hello.get("limits")
    bound = limits.get("max_memo_tokens", 0) if isinstance(limits, dict) else 0
    return bound if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0 else 0
