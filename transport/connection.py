"""Connection: the client's end of one carrier connection (asyncio).

It opens the channel (tcp socket, shm control socket, ucx endpoint), says
hello (version, token, tenant), re-registers the namespaces it knows after a
reconnect, and runs requests one at a time (a lock keeps frames in order).
A request that fails in transit (connection lost, timeout) drops the
connection: its stream position is unknown. The next request reconnects,
but not sooner than ``retry_interval`` after a failed attempt, so a daemon
that is down costs callers one fast ``Unavailable`` instead of a connect
timeout each.

Deadlines: a request's ``timeout`` bounds everything it waits for: its turn
on the connection (behind other requests), the (re)connect and hello (a ucx
connect keeps ``connect_timeout``), and the reply's header. Payloads extend
it by their size at ``min_rate`` bytes a second (sent before the header,
received after it), so a large transfer that keeps moving is not cut off
while a silent peer is detected within the timeout. ``abort(reason)`` (a node that left its cluster) ends every
request in flight at once with ``Unavailable(reason)`` and closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sys
import time
from collections.abc import Callable

from kvstore.errors import (
    ErrorCode,
    KVStoreError,
    ProtocolError,
    Timeout,
    Unavailable,
    error_from_code,
)
from kvstore.transport.channel import SocketChannel
from kvstore.transport.framing import unpack_header
from kvstore.transport.limits import Limits
from kvstore.transport.messages import PROTOCOL_VERSION, Op, Reply, Request, parse_reply
from kvstore.transport.payloads import payload_size
from kvstore.transport.urls import CarrierURL

log = logging.getLogger(__name__)
# Error replies after which the daemon closes the connection (or is going away).
CLOSING_CODES = frozenset({
    ErrorCode.UNAUTHORIZED, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.PROTOCOL,
    ErrorCode.TOO_LARGE, ErrorCode.DRAINING,
})

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - 3.10

    class _timeout:  # a minimal asyncio.timeout
        def __init__(self, delay):
            self.delay = delay

        async def __aenter__(self):
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            self._handle = loop.call_later(self.delay, task.cancel)
            self._start = loop.time()

        async def __aexit__(self, exc_type, exc, tb):
            self._handle.cancel()
            if exc_type is asyncio.CancelledError and (
                asyncio.get_running_loop().time() - self._start >= self.delay
            ):
                raise asyncio.TimeoutError from exc
            return False


async def open_channel(url: CarrierURL, timeout: float):
    loop = asyncio.get_running_loop()
    if url.scheme == "ucx":
        from kvstore.transport.ucx import open_ucx_channel

        return await open_ucx_channel(url, timeout)
    if url.scheme == "shm":
        from kvstore.transport.fd_channel import widen_send_buffer

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        widen_send_buffer(sock)
        addr = url.path
    else:
        infos = await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with _timeout(timeout):
            await loop.sock_connect(sock, addr)
    except (OSError, asyncio.TimeoutError) as exc:
        sock.close()
        why = str(exc) or (f"no answer to connect within {timeout:g}s"
                           if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__)
        raise Unavailable(f"cannot reach {url}: {why}") from exc
    if url.scheme == "shm":  # the arena arrives as a descriptor (SCM_RIGHTS)
        from kvstore.transport.fd_channel import FdReceivingChannel

        return FdReceivingChannel(sock, loop)
    return SocketChannel(sock, loop)


class Connection:
    def __init__(
        self,
        url: CarrierURL,
        *,
        token: str | None = None,
        tenant: str = "",
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retry_interval: float = 0.5,
        client_name: str = "kvstore-client",
        limits: Limits | None = None,
        on_connect: Callable | None = None,
        min_rate: float = 50e6,
    ):
        self.url = url
        self.token = token
        self.tenant = tenant
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self.client_name = client_name
        self.limits = limits or Limits()
        self.on_connect = on_connect  # async callback(hello_result) after each (re)connect
        self.min_rate = min_rate  # bytes/s a payload must move at, beyond the timeout
        self._inflight: set[asyncio.Task] = set()
        self._abort_reason: str | None = None
        self.channel = None
        self.hello: dict = {}
        self.generation = 0
        self.specs: dict[bytes, dict] = {}  # ns id -> spec dict, re-registered on reconnect
        self.registered: set[bytes] = set()  # the ns ids this connection's session registered
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._retry_at = 0.0
        self.closed = False

    @property
    def connected(self) -> bool:
        return self.channel is not None

    # -- connection life ------------------------------------------------------
    async def _connect(self, budget: float | None = None) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            raise Unavailable(f"{self.url} unreachable (retrying in {self._retry_at - now:.2f}s)")
        wait = self.connect_timeout
        # ucx: a hello cancelled within its first milliseconds crashed the daemon's ucx
        # side (tests/transport/test_e2e.py test_big_blocks_bulk_paths, timeout=0.001),
        # so a ucx connect keeps its own connect_timeout.
        if budget is not None and self.url.scheme != "ucx":
            wait = min(wait, budget)
        try:
            channel = await self._open(wait)
        except Unavailable:
            self._retry_at = time.monotonic() + self.retry_interval
            raise
        self.channel = channel
        try:
            args = {"version": PROTOCOL_VERSION, "tenant": self.tenant, "client": self.client_name}
            if self.token is not None:
                args["token"] = self.token
            reply = await self._roundtrip(Request(Op.HELLO, args=args), None, wait)
            self.hello = reply.result
            if self.on_connect is not None:
                await self.on_connect(self.hello)
            self.registered = set()
            for ns, spec in list(self.specs.items()):
                await self._roundtrip(Request(Op.REGISTER, args={"spec": spec}), None, self.timeout)
                self.registered.add(ns)
        except BaseException as exc:
            self._drop()
            if isinstance(exc, (Unavailable, Timeout)):
                self._retry_at = time.monotonic() + self.retry_interval
            raise
        self.generation += 1
        if self.generation > 1:
            log.info("reconnected to %s", self.url)

    async def _open(self, wait: float):
        return await open_channel(self.url, wait)

    async def _register_known(self, ns: bytes | None, budget: float) -> None:
        """Register ``ns`` on this session first if the client knows it but the session
        does not (a namespace registered through the client's other connection)."""
        if ns is None or ns in self.registered:
            return
        spec = self.specs.get(ns)
        if spec is not None:
            await self._roundtrip(Request(Op.REGISTER, args={"spec": spec}), None, budget)
            self.registered.add(ns)

    def _drop(self) -> None:
        """Forget the connection after a failure (reset: its stream position is unknown)."""
        if self.channel is not None:
            self.channel.close(abort=True)
            self.channel = None

    def abort(self, reason: str) -> None:
        """End every request in flight now (``Unavailable(reason)``) and close (loop thread)."""
        self._abort_reason = reason
        self.closed = True
        for task in list(self._inflight):
            task.cancel()
        self._drop()

    async def close(self) -> None:
        async with self._lock:  # between requests: a graceful close
            self.closed = True
            if self.channel is not None:
                self.channel.close()
                self.channel = None

    # -- requests -------------------------------------------------------------
    async def request(
        self,
        op: Op,
        ns: bytes | None = None,
        args: dict | None = None,
        payloads=(),
        receive: Callable | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request and return its reply (an error reply raises).

        ``receive(reply) -> targets`` is called when the reply declares payload
        segments: it returns a writable buffer per segment (or None to drop
        it), or one buffer for all of them back to back, after checking the
        sizes; or it raises (the connection is dropped).
        """
        req = self._new_request(op, ns, args, payloads)
        budget = timeout or self.timeout
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = asyncio.current_task()
        self._inflight.add(task)
        try:
            try:
                async with _timeout(budget):  # the wait for our turn counts
                    await self._lock.acquire()
            except asyncio.TimeoutError as exc:
                raise Timeout(f"{op.value} to {self.url}: no answer within {budget:g}s "
                              "(queued behind an earlier request)") from exc
            try:
                if self.channel is None:
                    await self._connect(max(0.01, budget - (loop.time() - start)))
                await self._register_known(ns, max(0.01, budget - (loop.time() - start)))
                left = max(0.01, budget - (loop.time() - start))
                return await self._roundtrip(req, receive, left, payloads)
            finally:
                self._lock.release()
        except asyncio.CancelledError:
            if self._abort_reason is None:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise Unavailable(f"{op.value} to {self.url} abandoned: {self._abort_reason}") from None
        finally:
            self._inflight.discard(task)

    def _check_open(self) -> None:
        if self.closed:
            raise Unavailable(f"connection to {self.url} closed"
                              + (f": {self._abort_reason}" if self._abort_reason else ""))

    def _new_request(self, op: Op, ns: bytes | None, args: dict | None, payloads) -> Request:
        self._check_open()
        sizes = [payload_size(p) for p in payloads]
        return Request(op, ns=ns, args=args or {}, sizes=sizes)

    def _parse(self, request_id: int, raw) -> Reply:
        """The reply to request ``request_id`` in the header ``raw`` (None: the daemon closed)."""
        if raw is None:
            raise Unavailable("daemon closed the connection")
        reply = parse_reply(unpack_header(raw))
        if reply.id != request_id and reply.id:
            raise ProtocolError(f"reply {reply.id} to request {request_id}")
        if reply.sizes:
            self.limits.check_sizes(reply.sizes)
            if not reply.ok:
                raise ProtocolError("unexpected payload in reply")
        return reply

    def _checked(self, reply: Reply) -> Reply:
        """``reply``, or its error raised (dropping the connection when the daemon closes it)."""
        if not reply.ok:
            if reply.id == 0 or reply.status in CLOSING_CODES:  # the daemon closes
                self._drop()
            raise error_from_code(reply.status, reply.error)
        return reply

    async def send_only(self, op: Op, args: dict) -> None:
        """A request that gets no reply (``release`` with ``noreply``); best effort."""
        async with self._lock:
            if self.channel is None:
                return
            req = Request(op, id=next(self._ids), args=args)
            try:
                async with _timeout(self.timeout):
                    await self.channel.send(req.to_header())
            except (Unavailable, asyncio.TimeoutError, OSError):
                self._drop()

    async def _roundtrip(self, req: Request, receive, timeout: float, payloads=()) -> Reply:
        req.id = next(self._ids)
        channel = self.channel
        loop = asyncio.get_running_loop()
        rate = self.min_rate
        waited = timeout + sum(req.sizes) / rate
        start = loop.time()
        phase = "no reply"
        try:
            async with _timeout(waited):
                await channel.send(req.to_header(), payloads)
                raw = await channel.read_header(self.limits)
            reply = self._parse(req.id, raw)
            if reply.sizes:
                if receive is None:
                    raise ProtocolError("unexpected payload in reply")
                targets = receive(reply)
                phase = f"payload of {sum(reply.sizes)} bytes stalled"
                waited = waited - (loop.time() - start) + sum(reply.sizes) / rate
                async with _timeout(waited):
                    await channel.read_segments(targets, reply.sizes)
        except asyncio.TimeoutError as exc:
            self._drop()
            raise Timeout(f"{req.op.value} to {self.url}: {phase} within {timeout:.2g}s "
                          "(peer silent or unreachable)") from exc
        except OSError as exc:  # a socket error the channel did not wrap
            self._drop()
            raise Unavailable(f"{req.op.value} to {self.url} failed: {exc}") from exc
        except (KVStoreError, asyncio.CancelledError):
            self._drop()
            raise
        except Exception:  # e.g. the caller's ``receive`` failed mid-frame: the stream
            self._drop()  # position is lost, and a reset ends the daemon's side at once
            raise
        return self._checked(reply)
