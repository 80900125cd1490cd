"""StoreOps: the protocol's ops against the daemon's store, one method each.

The dispatcher (``transport.dispatch``) reads and checks a request, then calls
``StoreOps.handlers[op](session, request, payload, spec)`` with the session,
the request, its payload (``Payload``) and the namespace's spec (for the ops
that name one, checked already). Each returns an ``Outcome``: the reply, the
payload segments to send after it (arena views) and what to release once they
are sent. Refusals are raised as ``KVStoreError``s; the dispatcher turns them
into error replies.

``StoreOps`` owns what the ops need: the store (a ``ManagedStore``), the
limits, the token check, the executor that runs blocking store calls, and
``cluster`` (None, or the ``ClusterHook`` of a clustered daemon: a read of a
prefix this node lacks fetches it from a peer first, a write of a prefix
another node owns is forwarded to it, and so is a hint). ``server_stats`` reports the
dispatcher's counters for the ``stats`` op.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from kvstore.errors import (
    InvalidArgument,
    KVStoreError,
    LayoutMismatch,
    NotFound,
    ProtocolError,
    TooLarge,
    Unauthorized,
    UnsupportedVersion,
)
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import Lease, ManagedStore
from kvstore.tokens import full_blocks
from kvstore.transport import messages as m
from kvstore.transport.auth import TokenAuth
from kvstore.transport.cluster_hook import ClusterHook
from kvstore.transport.limits import Limits
from kvstore.transport.lookup_batch import read_lookups
from kvstore.transport.memo_budget import MemoBudget
from kvstore.transport.messages import Op, Reply, Request
from kvstore.transport.room_ahead import RoomAhead
from kvstore.transport.session import Payload, Session, WrittenPrefix
from kvstore.transport.stats_wire import ServerStats, stats_to_wire

log = logging.getLogger("kvstore.transport.dispatch")
MAX_NAMESPACES_PER_CONNECTION = 256


@dataclasses.dataclass
class Outcome:
    """What the dispatcher sends for one request, and what it releases afterwards."""

    reply: Reply | None  # None: no reply (a ``noreply`` release)
    payloads: list = dataclasses.field(default_factory=list)
    after: Callable[[], None] | None = None  # runs once the reply is sent (or failed)
    close: bool = False


Handler = Callable[[Session, Request, Payload, "NamespaceSpec | None"], Awaitable[Outcome]]


class StoreOps:
    def __init__(self, store: ManagedStore, limits: Limits, *, auth: TokenAuth | None = None,
                 server_name: str = "kvstore", executor: Executor | None = None,
                 server_stats: Callable[[], ServerStats] = ServerStats):
        self.store = store
        self.limits = limits
        self.memo_budget = MemoBudget()
        self.auth = auth
        self.server_name = server_name
        self.executor = executor
        self.room_ahead = RoomAhead(store, executor) if store.evicts_ahead else None
        self.server_stats = server_stats
        self.cluster: ClusterHook | None = None  # set by the cluster service
        self.handlers: dict[Op, Handler] = {
            Op.HELLO: self.hello,
            Op.REGISTER: self.register,
            Op.LOOKUP: self.lookup,
            Op.PUT: self.put,
            Op.GET: self.get,
            Op.LEASE: self.lease,
            Op.COMMIT: self.commit,
            Op.RELEASE: self.release,
            Op.DELETE: self.delete,
            Op.FLUSH: self.flush,
            Op.STATS: self.stats,
            Op.PING: self.ping,
            Op.HINT: self.hint,
            Op.LOOKUP_MANY: self.lookup_many,
        }

    # -- leases ---------------------------------------------------------------
    async def _lease_read(self, ns: bytes, tokens, extra: bytes) -> Lease:
        """A read lease; off the event loop when the store may block (read the SSD) for it.

        Pinning a prefix that lies partly on SSD promotes it (disk reads):
        those must not stall every other connection. A store without an SSD
        tier answers from memory, inline (a thread hop would cost more).
        """
        return await self._lease_off_loop(self.store.lease_read, ns, tokens, extra)

    async def _lease_write(self, ns: bytes, tokens, extra: bytes) -> Lease:
        """A write lease; off the event loop when the store may block for it.

        With an SSD tier, making room may wait for the SSD writer (a full
        staging buffer): that wait must not stall every other connection.
        """
        lease = await self._lease_off_loop(self.store.lease_write, ns, tokens, extra)
        if self.room_ahead is not None:  # evicts for the next write during the copy
            self.room_ahead.ask(ns, len(lease.slots))
        return lease

    async def _lease_off_loop(self, take: Callable[..., Lease], ns: bytes, tokens,
                              extra: bytes) -> Lease:
        """``take(ns, tokens, extra)`` inline when the store never blocks, else on the
        executor; a lease granted after the connection went is released, not leaked."""
        if not self.store.may_block:
            return take(ns, tokens, extra)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, take, ns, tokens, extra)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the connection is going: release what is granted
            fut.add_done_callback(self._release_orphan)
            raise

    async def _cluster_read(self, session: Session, spec: NamespaceSpec, ns: bytes, tokens,
                            extra: bytes) -> Lease:
        """A read lease, after the cluster (if any) fetched what a peer has and we lack."""
        if self.cluster is None:
            return await self._lease_read(ns, tokens, extra)
        await self.cluster.fill(session, spec, ns, tokens, extra)
        lease = await self._lease_read(ns, tokens, extra)
        self.cluster.record_hit(session, spec, ns, tokens, extra, lease.num_tokens)
        return lease

    def _release_orphan(self, fut) -> None:
        if not fut.cancelled() and fut.exception() is None:
            try:
                self.store.release(fut.result().lease_id)
            except Exception:  # pragma: no cover - the store is closing
                log.debug("releasing an orphaned lease failed")

    def end_session(self, session: Session) -> None:
        """Release every lease of a connection that ended (however it ended)."""
        for lease_id in list(session.leases):
            try:
                self.store.release(lease_id)
            except Exception:  # the store may be closing
                log.debug("releasing lease %s of a closed session failed", lease_id)
        if session.leases:
            log.debug("released %d leases of %s", len(session.leases), session.peer)
        session.leases.clear()
        session.written.clear()
        session.prompts = None
        self.memo_budget.give_back(session.memo_tokens)
        session.memo_tokens = 0

    def _tokens(self, req: Request):
        tokens = m.decode_tokens(req.args)
        self.limits.check_tokens(len(tokens))
        return tokens, m.arg_bytes(req.args, "extra")

    # -- the ops ------------------------------------------------------------------
    async def hello(self, session: Session, req: Request, payload: Payload,
                    spec: NamespaceSpec | None) -> Outcome:
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
        session.memo_tokens = self.memo_budget.grant(self.limits)
        limits = self.limits.to_dict()
        limits["max_memo_tokens"] = session.memo_tokens  # this connection's grant
        result = {
            "version": m.PROTOCOL_VERSION,
            "server": self.server_name,
            "carrier": session.carrier,
            "tenant": tenant,
            "limits": limits,
        }
        if session.arena_access:  # the tenant's own arena, as a descriptor (SCM_RIGHTS)
            arena = self.store.tenant_arena(tenant)
            result["arena"] = {"fd": True, "size": arena.size, "base": arena.base}
            session.pass_fds = [arena.fd]
        return Outcome(Reply(req.id, result=result))

    async def register(self, session: Session, req: Request, payload: Payload,
                       spec: NamespaceSpec | None) -> Outcome:
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
        # off the event loop: a new namespace waits for the manifest write (disk, fsync)
        ns = await asyncio.get_running_loop().run_in_executor(self.executor, self.store.register,
                                                              spec)
        session.namespaces[ns] = spec
        result = {"ns": ns, "block_bytes": spec.block_bytes, "block_tokens": spec.block_tokens}
        return Outcome(Reply(req.id, result=result))

    async def lookup(self, session: Session, req: Request, payload: Payload,
                     spec: NamespaceSpec | None) -> Outcome:
        tokens, extra = self._tokens(req)
        n = self.store.lookup(req.ns, tokens, extra)
        if self.cluster is not None:
            n = await self.cluster.lookup(session, spec, req.ns, tokens, extra, n)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def lookup_many(self, session: Session, req: Request, payload: Payload,
                          spec: NamespaceSpec | None) -> Outcome:
        """The cached prefix of each of many token arrays of one namespace, in one reply
        (the arrays: the payload's segments, or the connection's prompt memo's)."""
        batch, extras = await read_lookups(session, req, payload, self.limits)
        hits = self.store.lookup_many(req.ns, batch, extras)
        if self.cluster is not None:
            hits = [await self.cluster.lookup(session, spec, req.ns, t, e, n)
                    for t, e, n in zip(batch, extras, hits)]
        return Outcome(Reply(req.id, result={"tokens": hits}))  # ints (the BlockStore API)

    async def put(self, session: Session, req: Request, payload: Payload,
                  spec: NamespaceSpec | None) -> Outcome:
        tokens, extra = self._tokens(req)
        nblocks = len(req.sizes)
        if any(size != spec.block_bytes for size in req.sizes):
            raise LayoutMismatch(
                f"every block of this namespace is {spec.block_bytes} bytes"
            )
        if nblocks > full_blocks(tokens, spec.block_tokens):
            raise InvalidArgument(f"{nblocks} blocks for {len(tokens)} tokens")
        tokens = tokens[: nblocks * spec.block_tokens]
        if nblocks == 0:
            return Outcome(Reply(req.id, result={"tokens": 0}))
        lease, targets = await self._lease_write(req.ns, tokens, extra), []
        try:  # None: cached already (or no room), dropped
            for i in range(nblocks):
                j = i - lease.first_block
                view = self.store.read_slot(lease.slots[j]) if 0 <= j < len(lease.slots) else None
                if view is not None and view.readonly:  # pragma: no cover
                    raise ProtocolError("the store's arena views are read-only")
                targets.append(view)
            await payload.read_segments(targets)
        except BaseException:
            self.store.release(lease.lease_id)
            raise
        n = self.store.commit_lease(lease.lease_id)
        if self.cluster is not None:
            await self.cluster.after_put(session, spec, req.ns, tokens, extra)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def get(self, session: Session, req: Request, payload: Payload,
                  spec: NamespaceSpec | None) -> Outcome:
        tokens, extra = self._tokens(req)
        max_blocks = req.args.get("max_blocks")
        if max_blocks is not None:
            tokens = tokens[: m.arg_uint(req.args, "max_blocks") * spec.block_tokens]
        lease = await self._cluster_read(session, spec, req.ns, tokens, extra)
        try:
            views = [self.store.read_slot(slot) for slot in lease.slots]
        except BaseException:
            self.store.release(lease.lease_id)
            raise
        reply = Reply(req.id, result={"tokens": int(lease.num_tokens)}, sizes=[len(v) for v in views])
        return Outcome(reply, views, after=lambda: self.store.release(lease.lease_id))

    async def lease(self, session: Session, req: Request, payload: Payload,
                    spec: NamespaceSpec | None) -> Outcome:
        if not session.arena_access:
            raise InvalidArgument("leases are offered on the shm carrier only")
        if len(session.leases) >= self.limits.max_leases_per_connection:
            raise TooLarge(
                f"{len(session.leases)} leases held (limit {self.limits.max_leases_per_connection})"
            )
        tokens, extra = self._tokens(req)
        mode = m.arg_str(req.args, "mode", "read")
        if mode == "read":
            lease = await self._cluster_read(session, spec, req.ns, tokens, extra)
        elif mode == "write":
            lease = await self._lease_write(req.ns, tokens, extra)
            if self.cluster is not None:
                session.written[lease.lease_id] = WrittenPrefix(spec, req.ns, tokens, extra)
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

    def _own_lease(self, session: Session, req: Request) -> Lease:
        lease_id = m.arg_uint(req.args, "lease")
        lease = session.leases.pop(lease_id, None)
        if lease is None:
            raise NotFound(f"no lease {lease_id} on this connection")
        return lease

    async def commit(self, session: Session, req: Request, payload: Payload,
                     spec: NamespaceSpec | None) -> Outcome:
        lease = self._own_lease(session, req)
        if not lease.writable:
            self.store.release(lease.lease_id)
            raise InvalidArgument("only a write lease can be committed (released instead)")
        n = self.store.commit_lease(lease.lease_id)
        written = session.written.pop(lease.lease_id, None)
        if self.cluster is not None and written is not None:
            await self.cluster.after_put(session, written.spec, written.ns, written.tokens,
                                         written.extra)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def release(self, session: Session, req: Request, payload: Payload,
                      spec: NamespaceSpec | None) -> Outcome:
        lease = self._own_lease(session, req)
        session.written.pop(lease.lease_id, None)
        self.store.release(lease.lease_id)
        if req.args.get("noreply"):
            return Outcome(None)
        return Outcome(Reply(req.id))

    async def delete(self, session: Session, req: Request, payload: Payload,
                     spec: NamespaceSpec | None) -> Outcome:
        tokens, extra = self._tokens(req)
        n = self.store.delete(req.ns, tokens, extra)
        return Outcome(Reply(req.id, result={"blocks": int(n)}))

    async def hint(self, session: Session, req: Request, payload: Payload,
                   spec: NamespaceSpec | None) -> Outcome:
        """Apply an engine's hint to the cached prefix here (and, clustered, at its owners).

        ``keep_until`` arrives as seconds from now; the store makes it a
        deadline on its own clock. Under the store lock only: never blocks.
        """
        tokens, extra = self._tokens(req)
        hint = m.decode_hint(req.args)
        n = self.store.hint(req.ns, tokens, hint, extra)
        if self.cluster is not None:
            n = await self.cluster.after_hint(session, spec, req.ns, tokens, extra, hint, n)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def flush(self, session: Session, req: Request, payload: Payload,
                    spec: NamespaceSpec | None) -> Outcome:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.store.flush)
        return Outcome(Reply(req.id))

    async def stats(self, session: Session, req: Request, payload: Payload,
                    spec: NamespaceSpec | None) -> Outcome:
        result = stats_to_wire(self.store.stats(), session.tenant, self.server_stats())
        return Outcome(Reply(req.id, result=result))

    async def ping(self, session: Session, req: Request, payload: Payload,
                   spec: NamespaceSpec | None) -> Outcome:
        return Outcome(Reply(req.id, result={}))
