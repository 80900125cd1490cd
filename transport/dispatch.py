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

``Dispatcher.cluster`` (None, or a ``kvstore.cluster.node.ClusterNode``) is
awaited around the data ops: a read of a prefix this node lacks fetches it
from a peer first, a write of a prefix another node owns is forwarded to it.

``Dispatcher.observer`` (None, or e.g. ``kvstore.metrics.request_metrics.RequestMetrics``)
is told of every request once it is answered, ``observer.request(carrier, req,
outcome, seconds)``, and of every refused frame or connection,
``observer.refused(carrier, code)``: per request, never per byte.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from kvstore.errors import (
    Draining,
    InvalidArgument,
    KVStoreError,
    NotFound,
    ProtocolError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedVersion,
)
from kvstore.transport import messages as m
from kvstore.transport.auth import TokenAuth
from kvstore.transport.framing import unpack_header
from kvstore.transport.limits import Limits
from kvstore.transport.messages import Op, Reply, Request
from kvstore.transport.ops import OpsMixin, Outcome

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Session:
    """What the daemon knows about one connection."""

    carrier: str
    peer: str = ""
    arena_access: bool = False  # shm: leases and the arena's path are offered
    hello: bool = False
    tenant: str = ""
    client: str = ""
    namespaces: dict = dataclasses.field(default_factory=dict)  # ns id -> NamespaceSpec
    leases: dict = dataclasses.field(default_factory=dict)  # lease id -> Lease
    written: dict = dataclasses.field(default_factory=dict)  # write lease id -> what it wrote


class Payload:
    """The declared segments of the current request, consumed in order."""

    def __init__(self, channel, sizes: list[int]):
        self.channel = channel
        self.sizes = sizes
        self.next = 0
        self.broken = False

    async def read_into(self, view) -> None:
        size = self.sizes[self.next]
        if len(view) != size:  # pragma: no cover - the dispatcher checks sizes first
            raise ProtocolError("segment size mismatch")
        self.next += 1
        try:
            await self.channel.read_into(view)
        except BaseException:
            self.broken = True
            raise

    async def read_segments(self, targets: list) -> None:
        """The next ``len(targets)`` segments into ``targets`` (None: dropped)."""
        sizes = self.sizes[self.next : self.next + len(targets)]
        self.next += len(targets)
        try:
            await self.channel.read_segments(targets, sizes)
        except BaseException:
            self.broken = True
            raise

    async def skip_one(self) -> None:
        size = self.sizes[self.next]
        self.next += 1
        try:
            await self.channel.skip(size)
        except BaseException:
            self.broken = True
            raise

    async def skip_rest(self) -> None:
        while self.next < len(self.sizes):
            await self.skip_one()


class Dispatcher(OpsMixin):
    def __init__(
        self,
        store,
        limits: Limits | None = None,
        auth: TokenAuth | None = None,
        server_name: str = "kvstore",
        executor=None,
    ):
        self.store = store
        self.limits = limits or Limits()
        self.auth = auth
        self.server_name = server_name
        self.executor = executor
        self.connections = 0
        self.inflight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.requests = 0
        self.errors = 0
        self.observer = None  # see the module docstring
        self.cluster = None  # a kvstore.cluster.node.ClusterNode when the daemon is clustered
        self._ops = {
            Op.HELLO: self._hello,
            Op.REGISTER: self._register,
            Op.LOOKUP: self._lookup,
            Op.PUT: self._put,
            Op.GET: self._get,
            Op.LEASE: self._lease,
            Op.COMMIT: self._commit,
            Op.RELEASE: self._release,
            Op.DELETE: self._delete,
            Op.FLUSH: self._flush,
            Op.STATS: self._stats,
            Op.PING: self._ping,
        }

    # -- the connection loop --------------------------------------------------
    async def serve(self, channel, session: Session) -> None:
        if self.connections >= self.limits.max_connections or self.draining:
            why = Draining("daemon is draining") if self.draining else Unavailable(
                f"too many connections (limit {self.limits.max_connections})"
            )
            try:
                await channel.send(Reply.failure(0, why).to_header())
            except Exception:  # the peer may be gone already
                pass
            channel.close()
            if self.observer is not None:
                self.observer.refused(session.carrier, why.code)
            return
        self.connections += 1
        log.debug("%s connection from %s", session.carrier, session.peer)
        abort = True  # a connection that ends in an exception is reset, not closed
        try:
            while await self._one(channel, session):
                pass
            abort = False
        except (KVStoreError, ConnectionError) as exc:  # lost, or a frame that ends it
            log.debug("%s connection %s ended: %s", session.carrier, session.peer, exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug: keep serving others
            log.exception("%s connection %s failed", session.carrier, session.peer)
        finally:
            self.connections -= 1
            self._end_session(session)
            channel.close(abort=abort)

    async def _one(self, channel, session: Session) -> bool:
        """Serve one request; False when the connection must end."""
        try:
            raw = await channel.read_header(self.limits)
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
            self.limits.check_sizes(req.sizes)
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

    def _end_session(self, session: Session) -> None:
        for lease_id in list(session.leases):
            try:
                self.store.release(lease_id)
            except Exception:  # the store may be closing
                log.debug("releasing lease %s of a closed session failed", lease_id)
        if session.leases:
            log.debug("released %d leases of %s", len(session.leases), session.peer)
        session.leases.clear()
        session.written.clear()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- dispatch -------------------------------------------------------------
    async def _handle(self, session: Session, req: Request, payload: Payload) -> Outcome:
        if self.draining:
            raise Draining("daemon is draining; reconnect later")
        handler = self._ops.get(req.op) if isinstance(req.op, Op) else None
        if handler is None:
            raise ProtocolError(f"unknown op {str(req.op)[:64]!r}")
        if not session.hello and req.op != Op.HELLO:
            raise Unauthorized("say hello first")
        if req.sizes and req.op not in m.PAYLOAD_OPS:
            raise InvalidArgument(f"op {req.op.value} takes no payload")
        spec = None
        if req.op in m.NS_OPS:
            spec = session.namespaces.get(req.ns)
            if spec is None:
                raise NotFound("unknown namespace (register it on this connection first)")
        return await handler(session, req, payload, spec)
