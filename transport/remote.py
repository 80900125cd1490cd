"""RemoteStore: a daemon's blocks behind the BlockStore-shaped API, sync and asyncio.

``RemoteStore.connect("tcp://127.0.0.1:7801")`` (or ``shm://PATH``,
``ucx://HOST:PORT``) returns a client whose calls mirror ``BlockStore``
(register / lookup / put / get / hint / delete / flush / stats), plus ``get_into``
that receives blocks straight into a caller's buffer.

Threading: over tcp, shm and ucx a sync call talks to the carrier on the
caller's thread (``transport.sync_connection``: a blocking connection, as
redis-py has; no thread hand-off; ucx progresses a worker of its own,
``transport.ucx_sync_channel``). The asyncio twins (``alookup``, ``alookup_many``,
``ahint``, ``aput``, ``aget``, ``aget_into``, ``aregister``, ``adelete``,
``aflush``, ``astats``) run the same op coroutines on a second connection,
opened on first use on the process's background I/O thread
(``transport.io_thread``), and await them from any event loop without
blocking it; the namespaces are the client's, registered on each
connection's session as it needs them. One client is safe to share between threads (a
connection sends its requests one at a time).

On shm the client is a ``LeasingStore`` (``capabilities.leases``): the lease
calls work (``lease_read`` / ``lease_write`` / ``commit_lease`` / ``release``
/ ``read_slot``) and ``kvstore.client.Namespace`` encodes a put straight into
the arena slots and decodes a get straight out of them (one copy each way).

Unreachable daemon: the soft-failure rule of ``kvstore.availability``. With
``strict=False`` (the default) ``lookup`` returns 0, ``get`` misses and
``put`` returns 0 when the daemon cannot be reached, times out or is
draining (logged once per outage); the engine recomputes. A ``hint`` is
dropped then (it only reorders evictions). With
``strict=True`` they raise ``Unavailable`` (or ``Timeout``, ``Draining``).
``register`` succeeds offline in both modes (the namespace id is the spec's
fingerprint with the connection's tenant; it is registered when the
connection comes back). Other errors (a wrong layout, bad arguments) always
raise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading

from kvstore.availability import OFFLINE, SoftFailures
from kvstore.errors import InvalidArgument, Timeout, Unauthorized, Unavailable
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import Alloc, ArenaInfo, ArenaSlot, Capabilities, Lease, PrefixHint
from kvstore.transport.connection import Connection
from kvstore.transport.io_thread import IOThread
from kvstore.transport.shm_client import RemoteSlot, ShmOps
from kvstore.transport.stats_wire import RemoteStats
from kvstore.transport.sync_connection import SyncConnection, drive
from kvstore.transport.urls import parse_url
from kvstore.transport.wire_client import WireOps, default_alloc

log = logging.getLogger(__name__)


class RemoteStore:
    """A daemon's store as a ``BlockStore`` (a ``LeasingStore`` on shm); see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        tenant: str = "",
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retry_interval: float = 0.5,
        strict: bool = False,
        client_name: str = "kvstore-client",
    ):
        self.url = parse_url(url)
        if token is None:
            token = os.environ.get("KVSTORE_AUTH_TOKEN")
        self.timeout = timeout
        self.availability = SoftFailures(strict, str(self.url), log)
        self.capabilities = Capabilities(leases=self.url.scheme == "shm", async_lookup=True,
                                         gathered_payloads=self.url.scheme == "tcp")
        self._conn_args = dict(token=token, tenant=tenant, timeout=timeout,
                               connect_timeout=connect_timeout, retry_interval=retry_interval,
                               client_name=client_name)
        # the sync calls' connection: blocking on the caller's thread (tcp, shm, ucx)
        self.blocking = self.url.scheme in ("tcp", "shm", "ucx")
        conn: Connection
        if self.blocking:
            conn = SyncConnection(self.url, **self._conn_args)
            self._call = conn.call  # a request as a plain call on this thread (``lookup``)
        else:
            conn = Connection(self.url, **self._conn_args)
            self._call = None
        self.conn = conn
        self.ops: WireOps = self._ops_on(conn)
        self._aops: WireOps | None = None if self.blocking else self.ops
        self._io: IOThread | None = None
        self._aops_lock = threading.Lock()
        self.closed = False

    def _ops_on(self, conn: Connection) -> WireOps:
        return ShmOps(conn) if self.capabilities.leases else WireOps(conn)

    @property
    def io(self) -> IOThread:
        """The process's I/O thread (started on first use: ucx, the asyncio twins)."""
        if self._io is None or self._io.pid != os.getpid():
            self._io = IOThread.get()
        return self._io

    @property
    def aops(self) -> WireOps:
        """The ops of the asyncio twins' connection (ucx: the only one), made on first use.

        It shares the client's namespaces with ``ops``: each connection
        registers one on its session before the first request that names it.
        """
        with self._aops_lock:
            if self._aops is None:
                conn = Connection(self.url, **self._conn_args)
                conn.specs = self.conn.specs
                ops = self._ops_on(conn)
                ops.geometry, ops.specs = self.ops.geometry, self.ops.specs
                self._aops = ops
            return self._aops

    @classmethod
    def connect(cls, url: str, **kwargs) -> RemoteStore:
        """A client of the daemon at ``url``; connects lazily (``ping`` to check now)."""
        return cls(url, **kwargs)

    @property
    def strict(self) -> bool:
        """Raise when the daemon is unreachable (else: a miss); see ``kvstore.availability``."""
        return self.availability.strict

    @property
    def tenant(self) -> str:
        return self.conn.tenant

    # -- plumbing -------------------------------------------------------------
    def _run(self, coro):
        """Run an op coroutine of ``ops`` for a sync call: on this thread, or (ucx) on the
        I/O thread."""
        if self.blocking:
            return drive(coro)
        margin = self.timeout + self.conn.connect_timeout + 5
        try:
            return self.io.run(coro, margin)
        except Timeout:  # the request's own deadline (a TimeoutError too): as it is
            raise
        except TimeoutError as exc:  # concurrent.futures.TimeoutError on 3.10
            # A backstop only: the connection's own deadline (``timeout``) ends requests first.
            raise Timeout(f"{self.url}: the client's I/O thread returned nothing within "
                          f"{margin:.0f}s (request deadline {self.timeout:g}s)") from exc

    async def _await(self, coro):
        return await asyncio.wrap_future(self.io.submit(coro))

    def _soft(self, coro, default):
        return self.availability.call(self._run, default, coro)

    async def _asoft(self, coro, default):
        return await self.availability.acall(self._await(coro), default)

    async def _register(self, ops: WireOps, spec: NamespaceSpec) -> bytes:
        if spec.tenant and spec.tenant != self.conn.tenant:
            raise Unauthorized(f"namespace tenant {spec.tenant!r} is not this client's tenant")
        try:
            return await ops.register(spec)
        except OFFLINE:
            # Offline (strict or not): remember it; it is registered on the next
            # connect, and the data calls report the outage.
            return self.adopt(spec)

    def adopt(self, spec: NamespaceSpec) -> bytes:
        """Register ``spec`` with the next connect, without a round trip now.

        For a fresh connection to a daemon that already knows the namespace (a
        pool's extra connection): its first request then connects, says hello
        and registers within that one request's deadline.
        """
        spec = dataclasses.replace(spec, tenant=self.conn.tenant)
        ns = spec.fingerprint
        self.conn.specs[ns] = spec.to_dict()
        self.ops.geometry[ns] = (spec.block_bytes, spec.block_tokens)
        self.ops.specs[ns] = spec
        return ns

    # -- the BlockStore API -----------------------------------------------------
    def register(self, spec: NamespaceSpec) -> bytes:
        return self._run(self._register(self.ops, spec))

    def namespaces(self) -> list[NamespaceSpec]:
        return list(self.ops.specs.values())

    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        if self._call is not None:  # on this thread as plain calls (no coroutine): the hot path
            return self.availability.call(self.ops.lookup_now, 0, self._call, ns, tokens, extra)
        return self._soft(self.ops.lookup(ns, tokens, extra), 0)

    def lookup_many(self, ns: bytes, tokens_list, extras=None) -> list[int]:
        """``lookup`` of each token array in one round trip (op ``lookup_many``); offline
        and not strict: all misses."""
        return self._soft(self.ops.lookup_many(ns, tokens_list, extras), [0] * len(tokens_list))

    def put(self, ns: bytes, tokens, payloads, extra: bytes = b"") -> int:
        return self._soft(self.ops.put(ns, tokens, payloads, extra), 0)

    def get_into(self, ns: bytes, tokens, alloc: Alloc = default_alloc, extra: bytes = b""):
        """``(tokens, buffer)``: the leading cached tokens' blocks in ``alloc(nbytes)``."""
        return self._soft(self.ops.get_into(ns, tokens, alloc, extra), (0, None))

    def get(self, ns: bytes, tokens, extra: bytes = b""):
        """``(tokens, [block, ...])`` (views into one buffer); ``(0, [])`` on a miss."""
        n, buf = self.get_into(ns, tokens, extra=extra)
        return n, self._split(ns, buf)

    def _split(self, ns: bytes, buf) -> list:
        if buf is None:
            return []
        block_bytes, _ = self.ops.geometry[ns]
        view = memoryview(buf)
        return [view[i : i + block_bytes] for i in range(0, len(view), block_bytes)]

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        return self._run(self.ops.delete(ns, tokens, extra))

    def hint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int:
        """Send ``hint`` about the prefix (op ``hint``); tokens it applied to at the daemon.

        A hint only reorders evictions: offline and not strict it is dropped (0).
        """
        return self._soft(self.ops.hint(ns, tokens, hint, extra), 0)

    def flush(self) -> None:
        self._run(self.ops.flush())

    def stats(self) -> RemoteStats:
        """The daemon's ``StoreStats`` (this tenant's namespaces) and its server counters."""
        return self._run(self.ops.stats())

    def ping(self) -> None:
        """Connect (if needed) and round-trip once; raises when the daemon is unreachable."""
        self._run(self.ops.ping())

    def abort(self, reason: str) -> None:
        """End the requests in flight now (``Unavailable(reason)``) and close; from any thread."""
        self.closed = True
        if self.blocking:
            self.conn.abort(reason)
        if self._aops is not None:
            self.io.loop.call_soon_threadsafe(self._aops.conn.abort, reason)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._run(self.ops.close())
                if self._aops is not None and self._aops is not self.ops:
                    self.io.run(self._aops.close(), self.timeout)
            except Exception:  # pragma: no cover - the loop is gone at exit
                pass

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the LeasingStore API (shm only): the caller copies straight into/out of the arena --
    def _shm(self) -> ShmOps:
        if not isinstance(self.ops, ShmOps):  # capabilities.leases is False
            raise InvalidArgument("leases are offered on the shm carrier only")
        return self.ops

    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        """Pin the cached prefix; its slots' ``read_slot`` views are this client's mapping.

        Offline and not strict: an empty lease (a miss).
        """
        return self._soft(self._shm().lease(ns, tokens, extra, "read"), Lease(0, ns, 0))

    def lease_write(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        """Slots for the blocks not cached yet; raises ``Unavailable`` offline (strict or not:
        there is nothing to write into)."""
        return self._leased_call(self._shm().lease(ns, tokens, extra, "write"))

    def commit_lease(self, lease_id: int) -> int:
        return self._leased_call(self._shm().commit(lease_id))

    def _leased_call(self, coro):
        """A lease call with no miss to fall back on: offline it raises ``Unavailable``
        (the error itself when strict), and the outage is logged as for the others."""
        try:
            result = self._run(coro)
        except OFFLINE as exc:
            self.availability.failed(exc, None)  # raises when strict
            raise Unavailable(str(exc)) from exc
        self.availability.answered()
        return result

    def release(self, lease_id: int) -> None:
        if lease_id:  # 0: the empty lease of an offline read
            try:
                self._run(self._shm().release(lease_id))
            except OFFLINE:  # the daemon released it with the connection
                pass

    def read_slot(self, slot: ArenaSlot) -> memoryview:
        if not isinstance(slot, RemoteSlot) or slot.view is None:
            raise InvalidArgument("not a slot of this client's lease")
        return slot.view

    def arena(self) -> ArenaInfo:
        ops = self._shm()
        if ops.arena is None:
            self.ping()
        return ArenaInfo(ops.arena.path, ops.arena.size)

    # -- the asyncio twins ----------------------------------------------------
    async def aregister(self, spec: NamespaceSpec) -> bytes:
        return await self._await(self._register(self.aops, spec))

    async def alookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        return await self._asoft(self.aops.lookup(ns, tokens, extra), 0)

    async def alookup_many(self, ns: bytes, tokens_list, extras=None) -> list[int]:
        return await self._asoft(self.aops.lookup_many(ns, tokens_list, extras),
                                 [0] * len(tokens_list))

    async def aput(self, ns: bytes, tokens, payloads, extra: bytes = b"") -> int:
        return await self._asoft(self.aops.put(ns, tokens, payloads, extra), 0)

    async def aget_into(self, ns: bytes, tokens, alloc: Alloc = default_alloc, extra: bytes = b""):
        return await self._asoft(self.aops.get_into(ns, tokens, alloc, extra), (0, None))

    async def aget(self, ns: bytes, tokens, extra: bytes = b""):
        n, buf = await self.aget_into(ns, tokens, extra=extra)
        return n, self._split(ns, buf)

    async def ahint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int:
        return await self._asoft(self.aops.hint(ns, tokens, hint, extra), 0)

    async def adelete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        return await self._await(self.aops.delete(ns, tokens, extra))

    async def aflush(self) -> None:
        await self._await(self.aops.flush())

    async def astats(self) -> RemoteStats:
        return await self._await(self.aops.stats())
