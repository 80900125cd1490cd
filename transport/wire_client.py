"""WireOps: the client's block operations when blocks travel inside frames (tcp, ucx).

``put`` sends the blocks as payload segments straight from the caller's
buffers (``sendmsg`` gather list / one ucx message each); ``get_into``
allocates the destination once the reply says how many blocks came back and
receives each segment directly into its place (``recv_into`` / ucx recv), so
a tensor handed in by the caller is filled without an intermediate copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np

from kvstore.errors import InvalidArgument, NotFound, ProtocolError, UnknownPrompt
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import Alloc, PrefixHint
from kvstore.tokens import as_tokens, as_tokens_many, full_blocks
from kvstore.transport.channel import cast_bytes
from kvstore.transport.connection import Connection
from kvstore.transport.digest_batch import DigestBatch, digests
from kvstore.transport.messages import (
    MAX_LOOKUPS,
    Op,
    Reply,
    encode_hint,
    lookup_many_args,
    lookup_many_memo_args,
)
from kvstore.transport.payloads import Gathered, payload_size
from kvstore.transport.prompt_memo import PromptMirror, advertised_bound
from kvstore.transport.stats_wire import RemoteStats, stats_from_wire

log = logging.getLogger(__name__)
HINTS_RETRY_S = 60.0


def default_alloc(nbytes: int):
    return np.empty(nbytes, dtype=np.uint8)


def _hits(reply) -> list:
    hits = reply.result.get("tokens")
    if not isinstance(hits, list):
        raise ProtocolError("lookup_many reply without its answers")
    return hits


class WireOps:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.geometry: dict[bytes, tuple[int, int]] = {}  # ns -> (block_bytes, block_tokens)
        self.specs: dict[bytes, NamespaceSpec] = {}
        self._no_hints_until = 0.0  # a daemon that predates ``hint`` said so
        self._no_lookup_many_until = 0.0  # ... or ``lookup_many``
        self._prompts: PromptMirror | None = None  # lookup_many's prompt memo, as the daemon has it
        self._prompts_lock = threading.Lock()  # threads share a sync client: one plan at a time

    # -- namespaces -----------------------------------------------------------
    async def register(self, spec: NamespaceSpec) -> bytes:
        raw = spec.to_dict()
        reply = await self.conn.request(Op.REGISTER, args={"spec": raw})
        ns = reply.result["ns"]
        if not isinstance(ns, bytes):
            raise ProtocolError("register reply without a namespace id")
        self.conn.specs[ns] = raw
        self.conn.registered.add(ns)
        self.geometry[ns] = (int(reply.result["block_bytes"]), int(reply.result["block_tokens"]))
        self.specs[ns] = spec
        return ns

    def _geometry(self, ns: bytes) -> tuple[int, int]:
        try:
            return self.geometry[ns]
        except KeyError:
            raise NotFound("namespace not registered on this client") from None

    @staticmethod
    def _args(tokens, extra: bytes) -> dict:
        """A request's ``tokens`` (an ``as_tokens`` array, sent from its own memory as a
        flat byte view: no copy, ``transport.request_frame``) and ``extra`` if set."""
        args = {"tokens": memoryview(tokens).cast("B")}
        if extra:
            args["extra"] = bytes(extra)
        return args

    # -- blocks ---------------------------------------------------------------
    async def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        reply = await self.conn.request(Op.LOOKUP, ns, self._args(as_tokens(tokens), extra))
        return int(reply.result["tokens"])

    def lookup_now(self, call: Callable[..., Reply], ns: bytes, tokens, extra: bytes = b"") -> int:
        """``lookup`` through ``call`` (a ``SyncConnection.call``) as a plain call: the sync
        client's hot path (a scheduler asks once per waiting request per step) without
        the two coroutines ``drive`` would run."""
        return int(call(Op.LOOKUP, ns, self._args(as_tokens(tokens), extra)).result["tokens"])

    async def lookup_many(self, ns: bytes, tokens_list: Sequence,
                          extras: Sequence[bytes] | None = None) -> list[int]:
        """Op ``lookup_many``: one round trip per ``max_tokens`` tokens (and ``MAX_LOOKUPS``
        arrays). A prompt already sent on this connection goes as its digest when the
        daemon keeps a prompt memo (``transport.prompt_memo``). A daemon older than the op
        answers "unknown op": single lookups then, without asking again for
        ``HINTS_RETRY_S`` seconds."""
        arrays = as_tokens_many(tokens_list)
        extras = list(extras) if extras is not None else [b""] * len(arrays)
        if len(extras) != len(arrays):
            raise InvalidArgument("lookup_many: one extra per token array")
        hits: list[int] = []
        for lo, hi in self._chunks(arrays):
            hits += await self._lookup_chunk(ns, arrays[lo:hi], extras[lo:hi])
        return hits

    def _chunks(self, arrays: list) -> list[tuple[int, int]]:
        """Index ranges of at most ``max_tokens`` tokens and ``MAX_LOOKUPS`` arrays each."""
        most = self.conn.limits.max_tokens
        if len(arrays) <= MAX_LOOKUPS and sum(map(len, arrays)) <= most:
            return [(0, len(arrays))] if arrays else []  # the usual batch: one request
        chunks, lo, total = [], 0, 0
        for i, arr in enumerate(arrays):
            if i > lo and (total + len(arr) > most or i - lo >= MAX_LOOKUPS):
                chunks.append((lo, i))
                lo, total = i, 0
            total += len(arr)
        if lo < len(arrays):
            chunks.append((lo, len(arrays)))
        return chunks

    async def _lookup_chunk(self, ns: bytes, arrays: list, extras: list) -> list[int]:
        if time.monotonic() >= self._no_lookup_many_until:
            try:
                hits = await self._lookup_many(ns, arrays, extras)
            except ProtocolError as exc:
                if "unknown op" not in str(exc):
                    raise
                self._no_lookup_many_until = time.monotonic() + HINTS_RETRY_S
                log.info("the daemon at %s does not know lookup_many; single lookups",
                         self.conn.url)
            else:
                if len(hits) != len(arrays) or not all(map(isinstance, hits, repeat(int))):
                    raise ProtocolError("lookup_many reply does not match the request")
                return hits
        return [await self.lookup(ns, arr, extra) for arr, extra in zip(arrays, extras)]

    def _mirror(self) -> PromptMirror | None:
        """This connection's prompt mirror; None (a plain request) while the daemon's memo
        is unknown (not connected yet), off, or not offered (a daemon that predates it)."""
        bound = advertised_bound(self.conn.hello) if self.conn.connected else 0
        if not bound:
            return None
        mirror = self._prompts
        if mirror is None or mirror.generation != self.conn.generation \
                or mirror.max_tokens != bound:  # a new session: its memo is empty
            mirror = self._prompts = PromptMirror(bound, self.conn.generation)
        return mirror

    async def _lookup_many(self, ns: bytes, arrays: list, extras: list) -> list:
        """One ``lookup_many`` request's answers: a memo request when the daemon keeps a
        prompt memo (prompts it holds go as digests), else every prompt's tokens."""
        mirror = self._mirror()
        if mirror is None:
            args, tokens = lookup_many_args(arrays, extras)
            reply = await self.conn.request(Op.LOOKUP_MANY, ns, args, payloads=tokens)
            return _hits(reply)
        keys = DigestBatch.of(digests(arrays))
        try:
            return await self._memo_request(ns, mirror, keys, arrays, extras, False)
        except UnknownPrompt:  # the daemon lost them (restarted, evicted): every token, once
            return await self._memo_request(ns, mirror, keys, arrays, extras, True)

    async def _memo_request(self, ns: bytes, mirror: PromptMirror, keys: DigestBatch,
                            arrays: list, extras: list, resend: bool) -> list:
        """A memo request planned on ``mirror``. Requests of other threads or tasks may
        reach the daemon in another order than they were planned: a digest it then lacks is
        ``UnknownPrompt`` and a resend, never a wrong answer (a digest names its tokens)."""
        with self._prompts_lock:
            carried = mirror.plan(keys, arrays, resend)
        args, tokens = lookup_many_memo_args(keys, carried, arrays, extras)
        try:
            reply = await self.conn.request(Op.LOOKUP_MANY, ns, args, payloads=tokens)
        except BaseException:  # the daemon may not have walked the batch as planned
            with self._prompts_lock:
                mirror.clear()  # holding fewer than the memo never sends an unknown digest
            raise
        return _hits(reply)

    def _blocks(self, ns: bytes, tokens, payloads: Sequence) -> tuple[np.ndarray, list]:
        block_bytes, block_tokens = self._geometry(ns)
        tokens = as_tokens(tokens)
        views = [p if isinstance(p, Gathered) else cast_bytes(p) for p in payloads]
        if len(views) > full_blocks(tokens, block_tokens):
            raise InvalidArgument(f"{len(views)} blocks for {len(tokens)} tokens")
        for view in views:
            if payload_size(view) != block_bytes:
                raise InvalidArgument(f"a block of this namespace is {block_bytes} bytes, "
                                      f"got {payload_size(view)}")
        return tokens[: len(views) * block_tokens], views

    async def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        tokens, views = self._blocks(ns, tokens, payloads)
        if not views:
            return 0
        reply = await self.conn.request(Op.PUT, ns, self._args(tokens, extra), payloads=views)
        return int(reply.result["tokens"])

    def _receiver(self, ns: bytes, tokens, alloc: Alloc, holder: list):
        block_bytes, block_tokens = self._geometry(ns)
        most = full_blocks(tokens, block_tokens)

        def receive(reply):
            count = len(reply.sizes)
            if count > most or any(size != block_bytes for size in reply.sizes):
                raise ProtocolError("reply blocks do not match the request")
            buf = alloc(count * block_bytes)
            view = cast_bytes(buf)
            if len(view) < count * block_bytes:
                raise InvalidArgument("alloc returned a buffer that is too small")
            holder.append(buf)
            return view[: count * block_bytes]  # the blocks back to back

        return receive

    async def get_into(self, ns: bytes, tokens, alloc: Alloc = default_alloc, extra: bytes = b""):
        """Leading cached tokens and a buffer from ``alloc(nbytes)`` holding their blocks."""
        tokens = as_tokens(tokens)
        holder: list = []
        reply = await self.conn.request(
            Op.GET, ns, self._args(tokens, extra), receive=self._receiver(ns, tokens, alloc, holder)
        )
        n = int(reply.result["tokens"])
        return (n, holder[0]) if n and holder else (0, None)

    async def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        reply = await self.conn.request(Op.DELETE, ns, self._args(as_tokens(tokens), extra))
        return int(reply.result["blocks"])

    async def hint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int:
        """Op ``hint``. A daemon older than the op answers "unknown op": the hint is
        dropped (0), and hints are not sent again for ``HINTS_RETRY_S`` seconds."""
        if time.monotonic() < self._no_hints_until:
            return 0
        args = {**self._args(as_tokens(tokens), extra), **encode_hint(hint)}
        try:
            reply = await self.conn.request(Op.HINT, ns, args)
        except ProtocolError as exc:
            if "unknown op" not in str(exc):
                raise
            self._no_hints_until = time.monotonic() + HINTS_RETRY_S
            log.info("the daemon at %s does not know hints; dropping them", self.conn.url)
            return 0
        return int(reply.result["tokens"])

    async def flush(self) -> None:
        await self.conn.request(Op.FLUSH)

    async def stats(self) -> RemoteStats:
        return stats_from_wire((await self.conn.request(Op.STATS)).result)

    async def ping(self) -> None:
        await self.conn.request(Op.PING)

    async def on_connect(self, hello: dict) -> None:
        """Called by the connection after each (re)connect."""

    async def close(self) -> None:
        await self.conn.close()
