"""The ops of the protocol, one method each, against the BlockStore (mixin of Dispatcher).

Every handler gets the session, the request, its payload (``Payload``) and
the namespace's spec (for the ops that name one, checked already) and
returns an ``Outcome``: the reply, the payload segments to send after it
(arena views) and what to release once they are sent. Refusals are raised
as ``KVStoreError``s; the dispatcher turns them into error replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

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
from kvstore.transport import messages as m
from kvstore.transport.messages import Reply, Request

log = logging.getLogger("kvstore.transport.dispatch")
MAX_NAMESPACES_PER_CONNECTION = 256


@dataclasses.dataclass
class Outcome:
    reply: Reply | None  # None: no reply (a ``noreply`` release)
    payloads: list = dataclasses.field(default_factory=list)
    after: Callable[[], None] | None = None  # runs once the reply is sent (or failed)
    close: bool = False


class OpsMixin:
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

    async def _cluster_read(self, session, spec, ns: bytes, tokens, extra: bytes):
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
        if self.cluster is not None:
            n = await self.cluster.lookup(session, spec, req.ns, tokens, extra, n)
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
        if self.cluster is not None:
            await self.cluster.after_put(session, spec, req.ns, tokens, extra)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def _get(self, session, req, payload, spec) -> Outcome:
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
            lease = await self._cluster_read(session, spec, req.ns, tokens, extra)
        elif mode == "write":
            lease = self.store.lease_write(req.ns, tokens, extra)
            if self.cluster is not None:
                session.written[lease.lease_id] = (spec, req.ns, tokens, extra)
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
        written = session.written.pop(lease.lease_id, None)
        if self.cluster is not None and written is not None:
            await self.cluster.after_put(session, *written)
        return Outcome(Reply(req.id, result={"tokens": int(n)}))

    async def _release(self, session, req, payload, spec) -> Outcome:
        lease = self._own_lease(session, req)
        session.written.pop(lease.lease_id, None)
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
