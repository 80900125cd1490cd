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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from kvstore.errors import (
    Draining,
    InvalidArgument,
    KVStoreError,
    LayoutMismatch,
    NotFound,
    ProtocolError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedVersion,
)
from kvstore.namespace import NamespaceSpec
from kvstore.transport import messages as m
from kvstore.transport.auth import TokenAuth
from kvstore.transport.framing import unpack_header
from kvstore.transport.limits import Limits
from kvstore.transport.messages import Op, Reply, Request

log = logging.getLogger(__name__)
MAX_NAMESPACES_PER_CONNECTION = 256


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


@dataclasses.dataclass
class Outcome:
    reply: Reply | None  # None: no reply (a ``noreply`` release)
    payloads: list = dataclasses.field(default_factory=list)
    after: Callable[[], None] | None = None  # runs once the reply is sent (or failed)
    close: bool = False


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


class Dispatcher:
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
            await self._refuse(channel, 0, exc)
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
            await self._refuse(channel, request_id, exc)
            return False
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

    def _failure(self, session: Session, req: Request, exc: BaseException) -> Outcome:
        self.errors += 1
        log.debug("refused %s: %s", req.op, exc)
        # A connection that has not said a good hello, or presents a bad
        # token or version, is closed; other refusals keep it.
        close = not session.hello or isinstance(exc, (Unauthorized, UnsupportedVersion))
        if req.op == Op.RELEASE and req.args.get("noreply"):
            return Outcome(None, close=close)
        return Outcome(Reply.failure(req.id, exc), close=close)

    async def _refuse(self, channel, request_id: int, exc: KVStoreError) -> None:
        self.errors += 1
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

    async def _lease_read(self, ns: bytes, tokens, extra: bytes):
        """A read lease; off the event loop when the store may read the SSD for it.

        Pinning a prefix that lies partly on SSD promotes it (disk reads):
        those must not stall every other connection. A store without an SSD
        tier answers from memory, inline (a thread hop would cost more).
        """
        if getattr(self.store, "ssd", None) is None:
            return self.store.lease_read(ns, tokens, extra)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, self.store.lease_read, ns, tokens, extra)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the connection is going: release what is granted
            fut.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, fut) -> None:
        if not fut.cancelled() and fut.exception() is None:
            try:
                self.store.release(fut.result().lease_id)
            except Exception:  # pragma: no cover - the store is closing
                log.debug("releasing an orphaned lease failed")

    def _tokens(self, req: Request):
        tokens = m.decode_tokens(req.args)
        self.limits.check_tokens(len(tokens))
        return tokens, m.arg_bytes(req.args, "extra")

    # -- ops ------------------------------------------------------------------
    async def _hello(self, session, req, payload, spec) -> Outcome:
        if session.hello:
            raise InvalidArgument("hello was already said on this connection")
        version = m.arg_uint(req.args, "version", 0)
        if not m.MIN_PROTOCOL_VERSION <= version <= m.PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {version} not supported (server speaks "
                f"{m.MIN_PROTOCOL_VERSION}..{m.PROTOCOL_VERSION})"
            )
        tenant = m.arg_str(req.args, "tenant")
        if self.auth is not None:
            self.auth.check(req.args.get("token"), tenant)
        session.hello = True
        session.tenant = tenant
        session.client = m.arg_str(req.args, "client")
        result = {
            "version": m.PROTOCOL_VERSION,
            "server": self.server_name,
            "carrier": session.carrier,
            "tenant": tenant,
            "limits": self.limits.to_dict(),
        }
        if session.arena_access:
            info = self.store.arena()
            result["arena"] = {"path": info.path, "size": info.size}
        return Outcome(Reply(req.id, result=result))

    async def _register(self, session, req, payload, spec) -> Outcome:
        raw = req.args.get("spec")
        if not isinstance(raw, dict):
            raise InvalidArgument("register needs a spec map")
        try:
            spec = NamespaceSpec.from_dict(raw)
        except KVStoreError:
            raise
        except Exception as exc:
            raise InvalidArgument(f"bad namespace spec: {exc}") from None
        if spec.tenant and spec.tenant != session.tenant:
            raise Unauthorized("wrong tenant: a namespace belongs to the connection's tenant")
        spec = dataclasses.replace(spec, tenant=session.tenant)
        if spec.block_bytes > self.limits.max_payload_bytes:
            raise TooLarge("block_bytes exceeds the payload limit")
        if (
            spec.fingerprint not in session.namespaces
            and len(session.namespaces) >= MAX_NAMESPACES_PER_CONNECTION
        ):
            raise TooLarge("too many namespaces on one connection")
        ns = self.store.register(spec)
        session.namespaces[ns] = spec
        result = {"ns": ns, "block_bytes": spec.block_bytes, "block_tokens": spec.block_tokens}
        return Outcome(Reply(req.id, result=result))

    async def _lookup(self, session, req, payload, spec) -> Outcome:
        tokens, extra = self._tokens(req)
        n = self.store.lookup(req.ns, tokens, extra)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def _put(self, session, req, payload, spec) -> Outcome:
        tokens, extra = self._tokens(req)
        nblocks = len(req.sizes)
        if any(size != spec.block_bytes for size in req.sizes):
            raise LayoutMismatch(
                f"every block of this namespace is {spec.block_bytes} bytes"
            )
        if nblocks > len(tokens) // spec.block_tokens:
            raise InvalidArgument(f"{nblocks} blocks for {len(tokens)} tokens")
        tokens = tokens[: nblocks * spec.block_tokens]
        if nblocks == 0:
            return Outcome(Reply(req.id, result={"tokens": 0}))
        lease = self.store.lease_write(req.ns, tokens, extra)
        committed = False
        try:
            targets = []  # None: cached already (or no room), the bytes are dropped
            for i in range(nblocks):
                j = i - lease.first_block
                view = self.store.read_slot(lease.slots[j]) if 0 <= j < len(lease.slots) else None
                if view is not None and view.readonly:  # pragma: no cover
                    raise ProtocolError("the store's arena views are read-only")
                targets.append(view)
            await payload.read_segments(targets)
            n = self.store.commit_lease(lease.lease_id)
            committed = True
        finally:
            if not committed:
                self.store.release(lease.lease_id)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def _get(self, session, req, payload, spec) -> Outcome:
        tokens, extra = self._tokens(req)
        max_blocks = req.args.get("max_blocks")
        if max_blocks is not None:
            tokens = tokens[: m.arg_uint(req.args, "max_blocks") * spec.block_tokens]
        lease = await self._lease_read(req.ns, tokens, extra)
        try:
            views = [self.store.read_slot(slot) for slot in lease.slots]
        except BaseException:
            self.store.release(lease.lease_id)
            raise
        reply = Reply(req.id, result={"tokens": int(lease.num_tokens)}, sizes=[len(v) for v in views])
        return Outcome(reply, views, after=lambda: self.store.release(lease.lease_id))

    async def _lease(self, session, req, payload, spec) -> Outcome:
        if not session.arena_access:
            raise InvalidArgument("leases are offered on the shm carrier only")
        if len(session.leases) >= self.limits.max_leases_per_connection:
            raise TooLarge(
                f"{len(session.leases)} leases held (limit {self.limits.max_leases_per_connection})"
            )
        tokens, extra = self._tokens(req)
        mode = m.arg_str(req.args, "mode", "read")
        if mode == "read":
            lease = await self._lease_read(req.ns, tokens, extra)
        elif mode == "write":
            lease = self.store.lease_write(req.ns, tokens, extra)
        else:
            raise InvalidArgument("lease mode must be 'read' or 'write'")
        session.leases[lease.lease_id] = lease
        result = {
            "lease": lease.lease_id,
            "tokens": int(lease.num_tokens),
            "first_block": int(lease.first_block),
            "writable": bool(lease.writable),
            "slots": [[s.offset, s.length] for s in lease.slots],
        }
        return Outcome(Reply(req.id, result=result))

    def _own_lease(self, session, req):
        lease_id = m.arg_uint(req.args, "lease")
        lease = session.leases.pop(lease_id, None)
        if lease is None:
            raise NotFound(f"no lease {lease_id} on this connection")
        return lease

    async def _commit(self, session, req, payload, spec) -> Outcome:
        lease = self._own_lease(session, req)
        if not lease.writable:
            self.store.release(lease.lease_id)
            raise InvalidArgument("only a write lease can be committed (released instead)")
        n = self.store.commit_lease(lease.lease_id)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def _release(self, session, req, payload, spec) -> Outcome:
        lease = self._own_lease(session, req)
        self.store.release(lease.lease_id)
        if req.args.get("noreply"):
            return Outcome(None)
        return Outcome(Reply(req.id))

    async def _delete(self, session, req, payload, spec) -> Outcome:
        tokens, extra = self._tokens(req)
        n = self.store.delete(req.ns, tokens, extra)
        return Outcome(Reply(req.id, result={"blocks": int(n)}))

    async def _flush(self, session, req, payload, spec) -> Outcome:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.store.flush)
        return Outcome(Reply(req.id))

    async def _stats(self, session, req, payload, spec) -> Outcome:
        stats = self.store.stats()
        tiers = [dataclasses.asdict(t) for t in stats.tiers]
        namespaces = []
        for ns in stats.namespaces:
            if ns.spec.tenant != session.tenant:
                continue  # a tenant sees its own namespaces only
            row = {f.name: getattr(ns, f.name) for f in dataclasses.fields(ns)}
            row["spec"] = ns.spec.to_dict()
            namespaces.append(row)
        result = {
            "tiers": tiers,
            "namespaces": namespaces,
            "server": {
                "connections": self.connections,
                "requests": self.requests,
                "errors": self.errors,
            },
        }
        return Outcome(Reply(req.id, result=result))

    async def _ping(self, session, req, payload, spec) -> Outcome:
        return Outcome(Reply(req.id, result={}))
