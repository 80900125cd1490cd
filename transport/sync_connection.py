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
``RuntimeError`` instead of hanging. Under it ``SyncConnection.call`` is the
request as a plain call, which the hottest op, ``lookup``, calls directly
(``WireOps.lookup_now``): a lookup then runs no coroutine at all.

The usual request costs one clock read, one ``sendmsg`` of a frame whose
tokens are sent from the caller's array (``transport.request_frame``: the
bytes ``pack_header`` would make, without its three copies) and one ``recv``
on a blocking socket (``transport.sync_channel``); the reply is checked as
on the asyncio path (``Connection._parse``: its id, its shape, its payload
sizes; an error reply raises).

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
from kvstore.transport.payloads import payload_size
from kvstore.transport.request_frame import RequestFramer
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
        self._framer = RequestFramer()  # used under the lock

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
                self.channel.forget()  # the parent's connection stays untouched
                self.channel = None

    def _unavailable_if_aborted(self, op: Op, exc: BaseException) -> None:
        if self._abort_reason is not None:
            raise Unavailable(f"{op.value} to {self.url} abandoned: {self._abort_reason}") from exc

    def call(
        self,
        op: Op,
        ns: bytes | None = None,
        args: dict | None = None,
        payloads=(),
        receive: Callable | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """``Connection.request`` on this thread, as a plain call (see there); blocks.

        The usual request (connected, namespace registered, the lock free) reads the
        clock once: its deadline is its start plus ``timeout``.
        """
        if self._forks != _forks:
            self._forked()
        if self.closed:
            self._check_open()
        budget = timeout or self.timeout
        start = time.monotonic()
        lock = self._lock
        queued = not lock.acquire(False)
        if queued and not lock.acquire(timeout=budget):
            raise Timeout(f"{op.value} to {self.url}: no answer within {budget:g}s "
                          "(queued behind an earlier request)")
        try:
            deadline = start + budget
            if queued or self.channel is None or (ns is not None and ns not in self.registered):
                deadline = self._ready(ns, start, budget)
            return self._exchange(op, ns, args or {}, payloads, receive, deadline, budget)
        except KVStoreError as exc:
            self._unavailable_if_aborted(op, exc)
            raise
        finally:
            lock.release()

    def _ready(self, ns: bytes | None, start: float, budget: float) -> float:
        """Connect and register ``ns`` on the session as needed, within the request's
        budget (some of it spent queued behind other threads' requests); the deadline
        left for the request itself (at least 10 ms)."""
        self._check_open()  # aborted while this request waited for its turn: no reconnect
        if self.channel is None:
            drive(self._connect(max(0.01, budget - (time.monotonic() - start))))
        drive(self._register_known(ns, max(0.01, budget - (time.monotonic() - start))))
        return max(start + budget, time.monotonic() + 0.01)

    async def request(self, op: Op, ns: bytes | None = None, args: dict | None = None,
                      payloads=(), receive: Callable | None = None,
                      timeout: float | None = None) -> Reply:
        """``call`` for the ops' coroutines (``drive``): never suspends."""
        return self.call(op, ns, args, payloads, receive, timeout)

    async def _roundtrip(self, req: Request, receive, timeout: float, payloads=()) -> Reply:
        """``_exchange`` of a ``Request`` (hello and register, inside ``_connect``)."""
        return self._exchange(req.op, req.ns, req.args, payloads, receive,
                              time.monotonic() + timeout, timeout)

    def _exchange(self, op: Op, ns: bytes | None, args: dict, payloads, receive,
                  deadline: float, budget: float) -> Reply:
        """Send one request (one ``sendmsg`` unless the socket is full) and read its reply
        by ``deadline``; payloads extend it at ``min_rate`` (``budget``: for the message)."""
        request_id = next(self._ids)
        channel = self.channel
        if payloads:
            sizes = [payload_size(p) for p in payloads]
            deadline += sum(sizes) / self.min_rate
        else:
            sizes = []
        channel.deadline = deadline
        phase = "no reply"
        try:
            bufs, nbytes = self._framer.frame(op.value, request_id, ns, args, sizes)
            channel.send_frame(bufs, nbytes, payloads)
            reply = self._parse(request_id, channel.read_header(self.limits))
            if reply.sizes:
                if receive is None:
                    raise ProtocolError("unexpected payload in reply")
                targets = receive(reply)
                phase = f"payload of {sum(reply.sizes)} bytes stalled"
                channel.deadline += sum(reply.sizes) / self.min_rate
                channel.read_segments(targets, reply.sizes)
        except ChannelTimeout as exc:
            self._drop()
            raise Timeout(f"{op.value} to {self.url}: {phase} within {budget:.2g}s "
                          "(peer silent or unreachable)") from exc
        except OSError as exc:  # a socket error the channel did not wrap
            self._drop()
            raise Unavailable(f"{op.value} to {self.url} failed: {exc}") from exc
        except BaseException:  # mid-frame (an error, KeyboardInterrupt): the stream is lost
            self._drop()
            raise
        if reply.status:
            self._checked(reply)  # raises the error the daemon answered
        return reply

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
