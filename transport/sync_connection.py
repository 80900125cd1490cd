"""SyncConnection: a client connection driven on the caller's thread (tcp, shm, ucx).

The synchronous ``RemoteStore`` calls talk to the socket themselves, as
redis-py does, instead of handing a coroutine to the background I/O thread
and waiting for it: no thread hand-off, no event-loop iteration per request.

One implementation of every op serves both paths. The ops classes
(``WireOps``, ``ShmOps``) are ``async def`` methods that only await
``conn.request(...)``; ``SyncConnection.request`` is a coroutine that never
suspends (it blocks on the socket instead), so ``drive(coro)`` runs an op to
its end with one ``coro.send(None)`` and takes the ``StopIteration`` value.
An op that did suspend (an asyncio await slipped into the sync path) raises
``RuntimeError`` instead of hanging.

Everything else is ``Connection``'s: hello (version, token, tenant; on shm
the arena descriptor checked by ``ShmOps.on_connect``), namespace
re-registration after a reconnect, ``retry_interval`` after a failed connect,
deadlines (a request's ``timeout`` covers its turn on the connection, the
(re)connect and the reply's header; payloads extend it at ``min_rate``), the
error replies that close, ``abort``. Requests are sent one at a time under a
``threading.Lock``, so a client is shared between threads as before: requests
of different threads interleave (an shm lease belongs to the connection, as
on the asyncio path, whichever thread took it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvstore.errors import KVStoreError, ProtocolError, Timeout, Unavailable
from kvstore.transport.connection import Connection
from kvstore.transport.messages import Op, Reply, Request
from kvstore.transport.sync_channel import BlockingChannel, ChannelTimeout, open_blocking

if TYPE_CHECKING:
    from kvstore.transport.ucx_sync_channel import UcxSyncChannel

_forks = 0  # children of fork this process descends from (the check costs no getpid call)


def _forked_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked_child)


def drive(coro):
    """Run ``coro`` (one that never suspends) to its end on this thread; its value."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a kvstore call on the synchronous path suspended (an asyncio await)")


class SyncConnection(Connection):
    """``Connection`` over a ``BlockingChannel``; its coroutines never suspend (``drive``)."""

    channel: BlockingChannel | UcxSyncChannel | None

    def __init__(self, url, **kwargs):
        if url.scheme not in ("tcp", "shm", "ucx"):
            raise ValueError(f"no blocking connection for {url.scheme}://")
        super().__init__(url, **kwargs)
        self._lock = threading.Lock()
        self._forks = _forks

    async def _open(self, wait: float) -> BlockingChannel:
        if self.url.scheme == "ucx":  # the caller's thread progresses its own ucx worker
            from kvstore.transport.ucx_sync_channel import open_ucx_sync

            return open_ucx_sync(self.url, wait)
        return open_blocking(self.url, wait)

    def _forked(self) -> None:
        """A child of fork shares the parent's socket: it forgets it (and reconnects)."""
        if self._forks != _forks:
            self._forks = _forks
            self._lock = threading.Lock()
            if self.channel is not None:
                if isinstance(self.channel, BlockingChannel):
                    self.channel.sock.close()  # the child's copy only: no shutdown, no reset
                else:
                    self.channel.forget()  # ucx: the parent's worker stays untouched
                self.channel = None

    def _unavailable_if_aborted(self, op: Op, exc: BaseException) -> None:
        if self._abort_reason is not None:
            raise Unavailable(f"{op.value} to {self.url} abandoned: {self._abort_reason}") from exc

    async def request(
        self,
        op: Op,
        ns: bytes | None = None,
        args: dict | None = None,
        payloads=(),
        receive: Callable | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """``Connection.request`` on this thread (see there); blocks, never suspends."""
        self._forked()
        req = self._new_request(op, ns, args, payloads)
        budget = timeout or self.timeout
        start = time.monotonic()
        if not self._lock.acquire(timeout=budget):
            raise Timeout(f"{op.value} to {self.url}: no answer within {budget:g}s "
                          "(queued behind an earlier request)")
        try:
            self._check_open()  # aborted while this request waited for its turn
            try:
                if self.channel is None:
                    await self._connect(max(0.01, budget - (time.monotonic() - start)))
                await self._register_known(ns, max(0.01, budget - (time.monotonic() - start)))
                left = max(0.01, budget - (time.monotonic() - start))
                return await self._roundtrip(req, receive, left, payloads)
            except KVStoreError as exc:
                self._unavailable_if_aborted(op, exc)
                raise
        finally:
            self._lock.release()

    async def _roundtrip(self, req: Request, receive, timeout: float, payloads=()) -> Reply:
        req.id = next(self._ids)
        channel = self.channel
        rate = self.min_rate
        channel.deadline = time.monotonic() + timeout + sum(req.sizes) / rate
        phase = "no reply"
        try:
            channel.send(req.to_header(), payloads)
            reply = self._parse(req, channel.read_header(self.limits))
            if reply.sizes:
                if receive is None:
                    raise ProtocolError("unexpected payload in reply")
                targets = receive(reply)
                phase = f"payload of {sum(reply.sizes)} bytes stalled"
                channel.deadline += sum(reply.sizes) / rate
                channel.read_segments(targets, reply.sizes)
        except ChannelTimeout as exc:
            self._drop()
            raise Timeout(f"{req.op.value} to {self.url}: {phase} within {timeout:.2g}s "
                          "(peer silent or unreachable)") from exc
        except OSError as exc:  # a socket error the channel did not wrap
            self._drop()
            raise Unavailable(f"{req.op.value} to {self.url} failed: {exc}") from exc
        except BaseException:  # mid-frame (an error, KeyboardInterrupt): the stream is lost
            self._drop()
            raise
        return self._checked(reply)

    async def send_only(self, op: Op, args: dict) -> None:
        """A request that gets no reply (``release`` with ``noreply``); best effort."""
        self._forked()
        with self._lock:
            if self.channel is None:
                return
            req = Request(op, id=next(self._ids), args=args)
            self.channel.deadline = time.monotonic() + self.timeout
            try:
                self.channel.send(req.to_header())
            except (Unavailable, ChannelTimeout, OSError):
                self._drop()

    def abort(self, reason: str) -> None:
        """End the request in flight now (``Unavailable(reason)``) and close; from any thread."""
        self._abort_reason = reason
        self.closed = True
        channel = self.channel
        if channel is not None:
            channel.shutdown()  # the thread blocked on it wakes and fails
        if self._lock.acquire(blocking=False):  # nothing in flight: close now
            try:
                self._drop()
            finally:
                self._lock.release()

    async def close(self) -> None:
        self._forked()
        with self._lock:  # between requests: a graceful close
            self.closed = True
            if self.channel is not None:
                self.channel.close()
                self.channel = None
