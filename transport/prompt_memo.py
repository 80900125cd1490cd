"""The prompt memo of ``lookup_many``: a prompt sent once on a connection travels as a digest.

A scheduler asks about the same waiting requests step after step; sending
each one's tokens every step (64 prompts of 4,096 tokens: 1 MiB a call) costs
more than the lookups themselves. So each connection has a memo:

* the daemon's ``PromptMemo`` (one per ``Session``): digest -> token array,
  an LRU bounded by its tokens (``Limits.max_memo_tokens``, counted against
  nothing else; the memory it keeps is at most twice that: ``PromptMemo``).
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
from collections.abc import Callable, Sequence
from operator import attrgetter, is_, itemgetter
from typing import Generic, TypeVar

import numpy as np

from kvstore.errors import UnknownPrompt
from kvstore.prefix_index.query_bytes import bytes_tokens
from kvstore.tokens import TOKEN_DTYPE
from kvstore.transport.digest_batch import DigestBatch

V = TypeVar("V")


_BASE = attrgetter("base")


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
        # called with each value evicted or replaced (the memo lets go of its buffer)
        self._on_drop: Callable[[V], None] | None = None
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
        entries, dropped = self._entries, self._on_drop
        self._repeat = None
        old = entries.pop(key, None)
        if old is not None:
            tokens -= old[0]
            if dropped is not None:
                dropped(old[1])
        if cost > self.max_tokens:
            return tokens
        tokens += cost
        while tokens > self.max_tokens:
            gone = entries.popitem(last=False)[1]
            tokens -= gone[0]
            if dropped is not None:
                dropped(gone[1])
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
        entries, dropped, bound = self._entries, self._on_drop, self.max_tokens
        self._repeat = None
        tokens = self.tokens
        for key, length, value in zip(keys, lengths, values):
            cost = length if length > 0 else 1
            if cost <= bound:
                entries[key] = (cost, value)
                tokens += cost
        while tokens > bound:
            gone = entries.popitem(last=False)[1]
            tokens -= gone[0]
            if dropped is not None:
                dropped(gone[1])
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

    A carried prompt is kept as it arrived, a view of its request's one buffer
    (no copy: a batch of new prompts costs what a plain request costs); the
    first request that names it by digest copies it into its own ``bytes``
    (``bytes_tokens``: the copy a plain lookup makes anyway to walk the tree,
    made once; the walks take those bytes as they are). A buffer lives while
    one of its prompts views it, so the memory held is at most twice the
    bound: a buffer whose viewing prompts fall under half of it (the others
    evicted or copied out) has them copied out at the end of the request.
    """

    def __init__(self, max_tokens: int):
        super().__init__(max_tokens)
        # id(buffer) -> [buffer, the tokens of the held prompts viewing it]
        self._buffers: dict[int, list] = {}
        self._touched: set[int] = set()  # buffers that lost a viewing prompt this request
        self._on_drop = self._dropped

    def resolve(self, batch: DigestBatch, carried: bytes,
                arrays: Sequence[np.ndarray]) -> PromptBatch:
        """Every prompt's tokens, in order: ``arrays`` (the segments, views of one buffer)
        for the prompts whose ``carried`` flag is 1 (held from now on), the memo's for the
        others. ``UnknownPrompt`` (the memo emptied) for a digest it does not hold.

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
        self._repeat = None
        digests = batch.keys
        self._hold_views(arrays)
        if len(arrays) == len(digests) and self.fresh(digests):  # all new: one eviction pass
            self._put_new(digests, map(len, arrays), arrays)
            if self._touched:
                self._release()
            return PromptBatch(arrays)
        out = self._walk(digests, carried, arrays)
        if self._touched:
            self._release()
        return out

    def _named(self, digests: list[bytes]) -> PromptBatch:
        """``resolve`` of a batch that carries no tokens: each prompt from the memo, into its
        own bytes (every one of them, so the tuple can be kept and given out again)."""
        if not self._buffers:  # no prompt held views a request's buffer: C-level passes
            got = list(map(self._entries.get, digests))
            if None not in got:
                values = list(map(itemgetter(1), got))
                if all(map(is_, map(type, map(_BASE, values)), itertools.repeat(bytes))):
                    deque(map(self._entries.move_to_end, digests), maxlen=0)  # ``get`` each
                    return PromptBatch(values)
        out = self._walk(digests, bytes(len(digests)), ())
        if self._touched:
            self._release()
        return out

    def _walk(self, digests: list[bytes], carried: bytes,
              arrays: Sequence[np.ndarray]) -> PromptBatch:
        """``resolve``, one prompt at a time (the tokens held before ``_release``)."""
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
            value = entry[1]
            if type(value.base) is not bytes:  # asked for again: into its own bytes, once
                self._dropped(value)
                value = _own(value)
                entries[key] = (entry[0], value)
            out.append(value)
        self.tokens = tokens
        return PromptBatch(out)

    def _hold_views(self, arrays: Sequence[np.ndarray]) -> None:
        """Count the carried prompts that view a buffer against it (before they are put:
        a prompt evicted or replaced is counted off), and check the buffer of those never
        held (over the bound)."""
        buffers, bound = self._buffers, self.max_tokens
        last, held = None, None  # the buffer of the previous prompt (the usual one)
        for value in arrays:
            base = value.base
            if base is None:
                continue
            if len(value) > bound:  # never held: its buffer is checked
                self._touched.add(id(base))
                continue
            if base is not last:
                held = buffers.get(id(base))
                if held is None:
                    held = buffers[id(base)] = [base, 0]
                last = base
            held[1] += len(value)

    def _dropped(self, value: np.ndarray) -> None:
        base = value.base
        if base is not None and type(base) is not bytes:
            self._buffers[id(base)][1] -= len(value)
            self._touched.add(id(base))

    def _release(self) -> None:
        """Let go of each buffer no prompt views; copy out the prompts of those that less
        than half of them view."""
        buffers = self._buffers
        for ident in self._touched:
            if ident not in buffers:  # no prompt held views it
                continue
            base, views = buffers[ident]
            if views and 2 * views < base.nbytes // TOKEN_DTYPE.itemsize:
                for key, (cost, value) in list(self._entries.items()):
                    if value.base is base:
                        self._entries[key] = (cost, _own(value))
                views = 0
            if not views:
                del buffers[ident]
        self._touched.clear()

    def clear(self) -> None:
        super().clear()
        self._buffers.clear()
        self._touched.clear()


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
