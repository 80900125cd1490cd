"""ShmOps: the client's block operations on the shm carrier (leases + copies in the arena).

The hello reply names the daemon's CPU arena (a file under /dev/shm); the
client maps it. ``put`` asks for a write lease (slots for the blocks not
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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from kvstore.errors import InvalidArgument, NotFound, ProtocolError, Unavailable
from kvstore.kernels import pinning
from kvstore.store_api import Alloc, ArenaSlot, Lease, WriteLease
from kvstore.tokens import as_tokens, full_blocks
from kvstore.transport.channel import cast_bytes
from kvstore.transport.connection import Connection
from kvstore.transport.messages import Op
from kvstore.transport.wire_client import WireOps, default_alloc


@dataclass(frozen=True)
class RemoteSlot(ArenaSlot):
    """An arena slot of a lease, with the client's view of it (that lease's mapping)."""

    view: memoryview | None = field(default=None, compare=False, repr=False)


def copy(dst: memoryview, src: memoryview) -> None:
    """memcpy through numpy (faster than memoryview slice assignment, releases the GIL)."""
    np.copyto(np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))


class ArenaMapping:
    """The client's read/write mapping of the daemon's arena file."""

    def __init__(self, path: str, size: int):
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < size:
                raise ProtocolError(f"arena {path} is smaller than announced")
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.path = path
        self.size = size
        self.view = memoryview(self._mm)
        # registered with CUDA (pinned) once a CUDA engine of this process asks
        self._pin = pinning.track(np.frombuffer(self._mm, dtype=np.uint8).ctypes.data, size)

    def slot(self, offset: int, length: int) -> memoryview:
        if not (isinstance(offset, int) and isinstance(length, int)) or (
            offset < 0 or length < 0 or offset + length > self.size
        ):
            raise ProtocolError("lease slot outside the arena")
        return self.view[offset : offset + length]

    def close(self) -> None:
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
        info = hello.get("arena")
        if not isinstance(info, dict):
            raise ProtocolError("the daemon offered no arena on its shm carrier")
        path, size = info.get("path"), info.get("size")
        if not isinstance(path, str) or not isinstance(size, int):
            raise ProtocolError("bad arena description")
        if self.arena is not None and (self.arena.path, self.arena.size) == (path, size):
            return
        old, self.arena = self.arena, None
        try:
            self.arena = ArenaMapping(path, size)
        except OSError as exc:
            raise Unavailable(f"cannot map the daemon's arena {path}: {exc}") from exc
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
