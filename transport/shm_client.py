"""ShmOps: the client's block operations on the shm carrier (leases + copies in the arena).

The hello reply carries the client's tenant's arena as a file descriptor
(``SCM_RIGHTS``, received by ``FdReceivingChannel``); the client maps that
descriptor and nothing else: a hello reply that names a path, or arrives
without exactly one descriptor, is refused (an arena it did not receive from
its authenticated peer is never opened). ``put`` asks for a write lease (slots for the blocks not
cached yet), copies its blocks into them and commits (``writing``);
``get_into`` asks for a read lease, copies the pinned blocks out and releases
the lease without waiting for an answer (``reading``). Only control messages cross the socket.

After a reconnect the arena is mapped again if the daemon's changed (a
restarted daemon); a lease is only ever used with the mapping of the
connection that granted it, and a lease from a connection that has since
dropped is not committed (the daemon released it when the socket closed).
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from kvstore.errors import InvalidArgument, NotFound, ProtocolError, Unavailable
from kvstore.kernels import pinning
from kvstore.kernels.host_copy import move
from kvstore.store_api import Alloc, ArenaSlot, Lease, WriteLease
from kvstore.tokens import as_tokens, full_blocks
from kvstore.transport.arena_prefault import ArenaPrefault
from kvstore.transport.channel import cast_bytes
from kvstore.transport.connection import Connection
from kvstore.transport.messages import Op
from kvstore.transport.wire_client import WireOps, default_alloc


@dataclass(frozen=True)
class RemoteSlot(ArenaSlot):
    """An arena slot of a lease, with the client's view of it (that lease's mapping)."""

    view: memoryview | None = field(default=None, compare=False, repr=False)


def copy(dst: memoryview, src: memoryview) -> None:
    """A memcpy through numpy (``host_copy.move``: faster than memoryview slice
    assignment or ``memmove`` here, and the GIL is released)."""
    move(np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))


class ArenaMapping:
    """The client's read/write mapping of its tenant's arena (a descriptor the daemon sent).

    Slots carry the daemon's global offsets; this arena covers
    ``[base, base + size)`` of them.
    """

    def __init__(self, fd: int, size: int, base: int = 0):
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < size:
                raise ProtocolError("the arena descriptor is not a memory file of the announced size")
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            address = np.frombuffer(self._mm, dtype=np.uint8).ctypes.data
            # this process's page tables for the blocks already there, in the background
            self.prefault = ArenaPrefault(fd, address, size)
        finally:
            os.close(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.path = f"memfd:{st.st_ino}"  # a name for logs: no file in the filesystem names it
        self.size = size
        self.base = base
        self.view = memoryview(self._mm)
        # registered with CUDA (pinned) once a CUDA engine of this process asks
        self._pin = pinning.track(address, size)

    def slot(self, offset: int, length: int) -> memoryview:
        if not (isinstance(offset, int) and isinstance(length, int)):
            raise ProtocolError("lease slot outside the arena")
        offset -= self.base
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ProtocolError("lease slot outside the arena")
        return self.view[offset : offset + length]

    def close(self) -> None:
        self.prefault.stop()
        pinning.untrack(self._pin)
        self.view.release()
        try:
            self._mm.close()
        except BufferError:  # a copy still holds a view: unmapped when it ends
            pass


class ShmOps(WireOps):
    def __init__(self, conn: Connection):
        super().__init__(conn)
        self.arena: ArenaMapping | None = None
        self.leases: dict[int, int] = {}  # lease id -> generation of the connection that has it
        conn.on_connect = self.on_connect

    async def on_connect(self, hello: dict) -> None:
        take = getattr(self.conn.channel, "take_fds", None)
        fds = take() if take is not None else []
        try:
            info = hello.get("arena")
            if not isinstance(info, dict):
                raise ProtocolError("the daemon offered no arena on its shm carrier")
            size, base = info.get("size"), info.get("base", 0)
            if "path" in info or info.get("fd") is not True:
                raise ProtocolError("the daemon named an arena by path: refused (only a "
                                    "descriptor from the authenticated peer is mapped)")
            if not isinstance(size, int) or not isinstance(base, int) or size <= 0 or base < 0:
                raise ProtocolError("bad arena description")
            if len(fds) != 1:
                raise ProtocolError(f"expected one arena descriptor with the hello reply, got {len(fds)}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        old, self.arena = self.arena, None
        try:
            self.arena = ArenaMapping(fds[0], size, base)
        except OSError as exc:
            raise Unavailable(f"cannot map the arena the daemon sent: {exc}") from exc
        if old is not None:
            old.close()

    def _lease_slots(self, reply, block_bytes: int) -> list:
        slots = reply.result.get("slots") or []
        if not isinstance(slots, list):
            raise ProtocolError("bad lease slots")
        views = []
        for slot in slots:
            if not isinstance(slot, list) or len(slot) != 2 or slot[1] != block_bytes:
                raise ProtocolError("bad lease slot")
            views.append(self.arena.slot(slot[0], slot[1]))
        return views

    async def _release(self, lease_id: int, generation: int) -> None:
        if self.conn.generation == generation:
            await self.conn.send_only(Op.RELEASE, {"lease": lease_id, "noreply": True})

    # -- the BlockStore lease API (the client copies; Namespace's zero-copy path) ----
    async def lease(self, ns: bytes, tokens, extra: bytes, mode: str) -> Lease:
        block_bytes, _ = self._geometry(ns)
        args = self._args(as_tokens(tokens), extra)
        args["mode"] = mode
        reply = await self.conn.request(Op.LEASE, ns, args)
        generation = self.conn.generation
        r = reply.result
        lease_id = r["lease"]
        try:
            views = self._lease_slots(reply, block_bytes)
            slots = [RemoteSlot(off, length, view) for (off, length), view in zip(r["slots"], views)]
            lease = Lease(lease_id, ns, int(r["tokens"]), slots, int(r.get("first_block", 0)),
                          bool(r.get("writable", mode == "write")))
        except BaseException:
            await self._release(lease_id, generation)
            raise
        self.leases[lease_id] = generation
        return lease

    async def commit(self, lease_id: int) -> int:
        generation = self.leases.pop(lease_id, None)
        if generation is None:
            raise NotFound(f"no lease {lease_id} on this client")
        if generation != self.conn.generation:
            raise Unavailable("connection lost while the lease was held (the daemon released it)")
        reply = await self.conn.request(Op.COMMIT, args={"lease": lease_id})
        return int(reply.result["tokens"])

    async def release(self, lease_id: int) -> None:
        generation = self.leases.pop(lease_id, None)
        if generation is not None:
            await self._release(lease_id, generation)

    @asynccontextmanager
    async def writing(self, ns: bytes, tokens, extra: bytes = b"") -> AsyncIterator[WriteLease]:
        """The async ``store_api.write_lease``: lease, copy (the body), commit or release."""
        held = WriteLease(await self.lease(ns, tokens, extra, "write"))
        try:
            yield held
        except BaseException:
            await self.release(held.lease.lease_id)
            raise
        held.stored = await self.commit(held.lease.lease_id)

    @asynccontextmanager
    async def reading(self, ns: bytes, tokens, extra: bytes = b"") -> AsyncIterator[Lease]:
        """The async ``store_api.read_lease``: the prefix pinned for the body, then released."""
        lease = await self.lease(ns, tokens, extra, "read")
        try:
            yield lease
        finally:
            await self.release(lease.lease_id)

    async def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        tokens, views = self._blocks(ns, tokens, payloads)
        if not views:
            return 0
        async with self.writing(ns, tokens, extra) as held:
            first, slots = held.lease.first_block, held.lease.slots
            if first < 0 or first + len(slots) > len(views):
                raise ProtocolError("write lease does not match the request")
            for j, slot in enumerate(slots):
                copy(slot.view, views[first + j])
        return held.stored

    async def get_into(self, ns: bytes, tokens, alloc: Alloc = default_alloc, extra: bytes = b""):
        block_bytes, block_tokens = self._geometry(ns)
        tokens = as_tokens(tokens)
        async with self.reading(ns, tokens, extra) as lease:
            n, slots = lease.num_tokens, lease.slots
            if len(slots) > full_blocks(tokens, block_tokens) or n != len(slots) * block_tokens:
                raise ProtocolError("read lease does not match the request")
            if not slots:
                return 0, None
            buf = alloc(len(slots) * block_bytes)
            out = cast_bytes(buf)
            if len(out) < len(slots) * block_bytes:
                raise InvalidArgument("alloc returned a buffer that is too small")
            for i, slot in enumerate(slots):
                copy(out[i * block_bytes : (i + 1) * block_bytes], slot.view)
            return n, buf

    async def close(self) -> None:
        await super().close()
        if self.arena is not None:
            self.arena.close()
            self.arena = None
