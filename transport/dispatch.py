"""Server dispatch: one connection's requests, checked and answered against a BlockStore.

Every carrier hands its accepted connections to ``Dispatcher.serve`` with a
channel (``read_header`` / ``read_into`` / ``skip`` / ``send`` / ``close``)
and a ``Session``. The loop is the same everywhere:

1. read the header (length checked against the limits before allocation);
2. decode and validate it; check the declared ``sizes`` against the limits
   before any payload byte is read. A frame whose extent cannot be trusted
   (bad header, oversized) gets an error reply and the connection is closed;
3. run the op. A refused request (unknown op, bad args, wrong layout, ...)
   has its payload skipped and gets an error reply; the connection stays;
4. send the reply (payload segments straight from arena memory), then release
   what the reply pinned.

A session's leases are released when its connection ends, however it ends
(a client killed mid-request leaves nothing pinned).

The ops themselves are ``Dispatcher.ops``, a ``transport.ops.StoreOps``
(the store, and ``ops.cluster``: the hook of a clustered daemon); the
dispatcher owns the connection loop and its counters (``connections``,
``inflight``, ``requests``, ``errors``) and ``draining`` (the daemon is
shutting down: new requests and connections are refused).

``Dispatcher.observer`` (None, or e.g. ``kvstore.metrics.request_metrics.RequestMetrics``)
is told of every request once it is answered, ``observer.request(carrier, req,
outcome, seconds)``, and of every refused frame or connection,
``observer.refused(carrier, code)``: per request, never per byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from kvstore.errors import (
    Draining,
    InvalidArgument,
    KVStoreError,
    NotFound,
    ProtocolError,
    Stalled,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedVersion,
)
from kvstore.store_api import ManagedStore
from kvstore.transport import messages as m
from kvstore.transport.auth import TokenAuth
from kvstore.transport.framing import unpack_header
from kvstore.transport.limits import Limits
from kvstore.transport.messages import Op, Reply, Request
from kvstore.transport.ops import Outcome, StoreOps
from kvstore.transport.pre_hello import PreHello
from kvstore.transport.session import Payload, Session
from kvstore.transport.stats_wire import ServerStats

__all__ = ["Dispatcher", "Outcome"]  # Outcome: for observers (metrics)

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        store: ManagedStore,
        limits: Limits | None = None,
        auth: TokenAuth | None = None,
        server_name: str = "kvstore",
        executor: Executor | None = None,
    ):
        self.limits = limits or Limits()
        self.ops = StoreOps(store, self.limits, auth=auth, server_name=server_name,
                            executor=executor, server_stats=self.server_stats)
        self.connections = 0  # open, with or without hello
        self.authenticated = 0  # past a good hello (max_connections applies to these)
        self.stalled = 0  # dropped: no hello in time, a stalled header, pushed out before hello
        self.pre_hello = PreHello(self.limits.max_pre_hello_connections)
        self.inflight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.requests = 0
        self.errors = 0
        self.observer = None  # see the module docstring

    def server_stats(self) -> ServerStats:
        return ServerStats(self.connections, self.requests, self.errors)

    # -- the connection loop --------------------------------------------------
    async def _refuse_connection(self, channel, session: Session, why: KVStoreError) -> None:
        try:
            await channel.send(Reply.failure(0, why).to_header())
        except Exception:  # the peer may be gone already
            pass
        channel.close()
        if self.observer is not None:
            self.observer.refused(session.carrier, why.code)

    async def serve(self, channel, session: Session) -> None:
        if self.draining:
            await self._refuse_connection(channel, session, Draining("daemon is draining"))
            return
        self.connections += 1
        key = id(session)
        self.pre_hello.enter(key, asyncio.current_task())
        log.debug("%s connection from %s", session.carrier, session.peer)
        abort = True  # a connection that ends in an exception is reset, not closed
        try:
            if await self._hello(channel, session, key):
                while await self._one(channel, session):
                    pass
            abort = False
        except Stalled as exc:
            self._stalled(session, "header", exc)
        except (KVStoreError, ConnectionError) as exc:  # lost, or a frame that ends it
            log.debug("%s connection %s ended: %s", session.carrier, session.peer, exc)
        except asyncio.CancelledError:
            if key in self.pre_hello.pushed and not self.draining:  # pushed out by newer connections
                self._stalled(session, "pushed-out", None)
            else:
                raise
        except Exception:  # pragma: no cover - a bug: keep serving others
            log.exception("%s connection %s failed", session.carrier, session.peer)
        finally:
            self.pre_hello.leave(key)
            self.connections -= 1
            if session.hello:
                self.authenticated -= 1
            self.ops.end_session(session)
            channel.close(abort=abort)

    async def _hello(self, channel, session: Session, key: int) -> bool:
        """Serve the frames before a good hello, under the pre-hello limits and deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.hello_seconds
        before = self.limits.before_hello()
        while not session.hello:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                more = await asyncio.wait_for(self._one(channel, session, before), left)
            except asyncio.TimeoutError:
                self._stalled(session, "hello", None)
                return False
            if not more:
                return False
        self.pre_hello.leave(key)
        grow = getattr(channel, "grow", None)  # stream channels: the full read-ahead now
        if grow is not None:
            grow()
        return True

    def _stalled(self, session: Session, phase: str, exc) -> None:
        self.stalled += 1
        log.info("dropped %s connection %s: %s", session.carrier, session.peer,
                 {"hello": f"no hello within {self.limits.hello_seconds:g}s",
                  "pushed-out": "pushed out by newer connections before its hello",
                  }.get(phase, str(exc)))
        if self.observer is not None:
            self.observer.stalled(session.carrier, phase)

    async def _one(self, channel, session: Session, limits: Limits | None = None) -> bool:
        """Serve one request; False when the connection must end."""
        limits = limits or self.limits
        try:
            raw = await channel.read_header(limits, limits.header_seconds)
        except TooLarge as exc:
            await self._refuse(channel, 0, exc, session)
            return False
        if raw is None:
            return False
        request_id = 0
        try:
            header = unpack_header(raw)
            if isinstance(header, dict) and isinstance(header.get("id"), int):
                request_id = header["id"] if 0 <= header["id"] <= m.MAX_ID else 0
            req = m.parse_request(header)
            limits.check_sizes(req.sizes)
        except KVStoreError as exc:
            await self._refuse(channel, request_id, exc, session)
            return False
        started = time.perf_counter()
        self.inflight += 1
        self._idle.clear()
        self.requests += 1
        payload = Payload(channel, req.sizes)
        outcome = None
        try:
            try:
                outcome = await self._handle(session, req, payload)
            except KVStoreError as exc:
                outcome = self._failure(session, req, exc)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.exception("op %s failed", req.op)
                outcome = self._failure(session, req, exc)
            if payload.broken:
                return False
            await payload.skip_rest()
            if outcome.reply is not None:
                await channel.send(outcome.reply.to_header(), outcome.payloads)
            return not outcome.close
        finally:
            if outcome is not None and outcome.after is not None:
                try:
                    outcome.after()
                except Exception:  # pragma: no cover
                    log.exception("releasing after %s failed", req.op)
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
            if self.observer is not None:
                self.observer.request(session.carrier, req, outcome, time.perf_counter() - started)

    def _failure(self, session: Session, req: Request, exc: BaseException) -> Outcome:
        self.errors += 1
        log.debug("refused %s: %s", req.op, exc)
        # A connection that has not said a good hello, or presents a bad
        # token or version, is closed; other refusals keep it.
        close = not session.hello or isinstance(exc, (Unauthorized, UnsupportedVersion))
        if req.op == Op.RELEASE and req.args.get("noreply"):
            return Outcome(None, close=close)
        return Outcome(Reply.failure(req.id, exc), close=close)

    async def _refuse(self, channel, request_id: int, exc: KVStoreError, session) -> None:
        self.errors += 1
        if self.observer is not None:
            self.observer.refused(session.carrier, exc.code)
        log.debug("closing connection: %s", exc)
        try:
            await channel.send(Reply.failure(request_id, exc).to_header())
        except (Unavailable, ConnectionError, OSError):
            pass

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- dispatch -------------------------------------------------------------
    async def _handle(self, session: Session, req: Request, payload: Payload) -> Outcome:
        if self.draining:
            raise Draining("daemon is draining; reconnect later")
        handler = self.ops.handlers.get(req.op) if isinstance(req.op, Op) else None
        if handler is None:
            raise ProtocolError(f"unknown op {str(req.op)[:64]!r}")
        if not session.hello and req.op != Op.HELLO:
            raise Unauthorized("say hello first")
        if req.op == Op.HELLO and not session.hello:  # max_connections counts the hello'd
            if self.authenticated >= self.limits.max_connections:
                raise Unavailable(f"too many connections (limit {self.limits.max_connections})")
            outcome = await handler(session, req, payload, None)
            if session.hello:
                self.authenticated += 1
            return outcome
        if req.sizes and req.op not in m.PAYLOAD_OPS:
            raise InvalidArgument(f"op {req.op.value} takes no payload")
        spec = None
        if req.op in m.NS_OPS:
            spec = session.namespaces.get(req.ns)
            if spec is None:
                raise NotFound("unknown namespace (register it on this connection first)")
        return await handler(session, req, payload, spec)
