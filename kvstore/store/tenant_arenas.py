"""TenantArenas: the CPU tier's memory, one memory file per tenant, behind one allocator face.

Each tenant's blocks live in that tenant's own arena: an anonymous memory
file (``memfd_create``; nothing in the filesystem names it, and it dies with
the last process that holds it), sealed against shrinking and growing so a
client holding its descriptor cannot truncate the daemon's mapping out from
under it. The shm carrier hands a connection the descriptor of its own
tenant's arena only (``SCM_RIGHTS``), so no tenant can map another's bytes.

To the rest of the store the arenas look like one address space: tenant
``i``'s arena covers global offsets ``[i * capacity, (i + 1) * capacity)``
and has its own ``SlabAllocator``; slots carry global offsets. Every arena is
``capacity`` bytes of address space but only the pages of live slabs hold
memory: a slab that empties is punched out (``MADV_REMOVE``). The tier's
capacity is a hard limit on the live bytes of all tenants together; each
tenant is held to its quota (``kvstore.store.quotas``) on top.

``shortage`` says why the last ``alloc`` failed: ``"quota"`` (the tenant is
at its own ceiling: it may only evict its own blocks) or ``"global"`` (the
tier is full: see ``Quotas`` for whose blocks may go).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import weakref
from collections.abc import Callable

import numpy as np

from kvstore.errors import InvalidArgument, StorageError
from kvstore.kernels import pinning
from kvstore.store.slab import SlabAllocator, SlotClass, auto_page_bytes

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _cleanup(mm: mmap.mmap, fd: int, pin: int = 0) -> None:
    pinning.untrack(pin)  # unregistered from CUDA before the pages go
    try:
        mm.close()
    except BufferError:  # views still exported: the mapping dies with them
        pass
    try:
        os.close(fd)
    except OSError:
        pass


class MemfdArena:
    """``size`` bytes of shared memory in an anonymous, sealed memory file."""

    def __init__(self, size: int, name: str = "kvstore"):
        if size <= 0:
            raise InvalidArgument("arena size must be positive")
        try:
            self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise StorageError(f"cannot create arena {name}: {exc}") from exc
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
            self._mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        except OSError as exc:
            os.close(self.fd)
            raise StorageError(f"cannot map arena {name}: {exc}") from exc
        self.size = size
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"  # for this process (prefault, tests)
        self.array = np.frombuffer(self._mm, dtype=np.uint8)
        self.view = memoryview(self._mm)
        # pinned for DMA once a CUDA engine in this process asks (kvstore.kernels.pinning)
        self._pin = pinning.track(self.array.ctypes.data, size)
        self._finalizer = weakref.finalize(self, _cleanup, self._mm, self.fd, self._pin)

    def discard(self, offset: int, length: int) -> None:
        """Give the pages of ``[offset, offset + length)`` back (they read as zeros)."""
        try:
            self._mm.madvise(mmap.MADV_REMOVE, offset, length)
        except (OSError, ValueError):  # pragma: no cover - best effort
            pass

    def close(self) -> None:
        self.view.release()
        self.array = None
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class TenantArena:
    """One tenant's arena: its memory file, its place in the global offsets, its allocator."""

    def __init__(self, tenant: str, index: int, size: int, page_bytes: int):
        self.tenant = tenant
        self.index = index
        self.base = index * size
        self.size = size
        self.memory = MemfdArena(size, f"kvstore-tenant-{index}")
        self.allocator = SlabAllocator(size, page_bytes)

    @property
    def fd(self) -> int:
        return self.memory.fd

    @property
    def path(self) -> str:
        return self.memory.path

    @property
    def view(self) -> memoryview:
        return self.memory.view


class TenantArenas:
    """The per-tenant arenas of one tier, with the ``SlabAllocator`` face the tier uses."""

    def __init__(self, capacity: int, page_bytes: int = 0,
                 quota_of: Callable[[str], int] | None = None,
                 on_new: Callable[[TenantArena], None] | None = None):
        self.capacity = capacity
        self.page_bytes = page_bytes or auto_page_bytes(capacity)
        SlabAllocator(capacity, self.page_bytes)  # validates the geometry now
        self.quota_of = quota_of or (lambda tenant: capacity)
        self.on_new = on_new
        self._by_tenant: dict[str, TenantArena] = {}
        self._by_index: list[TenantArena] = []
        self.live_bytes = 0
        self.shortage = "global"

    # -- arenas ---------------------------------------------------------------
    def arena(self, tenant: str) -> TenantArena:
        """Tenant ``tenant``'s arena (created on first use)."""
        a = self._by_tenant.get(tenant)
        if a is None:
            a = TenantArena(tenant, len(self._by_index), self.capacity, self.page_bytes)
            self._by_tenant[tenant] = a
            self._by_index.append(a)
            if self.on_new is not None:
                self.on_new(a)
        return a

    def arenas(self) -> list[TenantArena]:
        return list(self._by_index)

    def at(self, offset: int) -> tuple[TenantArena, int]:
        """The arena holding global ``offset`` and the offset inside it."""
        index, local = divmod(offset, self.capacity)
        if not 0 <= index < len(self._by_index):
            raise InvalidArgument(f"offset {offset} is in no arena")
        return self._by_index[index], local

    def used_by(self, tenant: str) -> int:
        a = self._by_tenant.get(tenant)
        return a.allocator.live_bytes if a is not None else 0

    def tenants(self) -> list[str]:
        return [a.tenant for a in self._by_index]

    def fair_share(self, tenant: str, asking: str | None = None) -> int:
        """What ``tenant`` keeps when others need room: min(quota, capacity / tenants holding
        bytes), the ``asking`` tenant counted even before its first block (a newcomer gets in)."""
        active = sum(1 for a in self._by_index
                     if a.allocator.live_bytes or a.tenant == asking) or 1
        return min(self.quota_of(tenant), self.capacity // active)

    # -- the allocator face ---------------------------------------------------
    def alloc(self, slot_bytes: int, tenant: str = "") -> int | None:
        a = self.arena(tenant)
        if a.allocator.live_bytes + slot_bytes > self.quota_of(tenant):
            self.shortage = "quota"
            return None
        if self.live_bytes + slot_bytes > self.capacity:
            self.shortage = "global"
            return None
        local = a.allocator.alloc(slot_bytes)
        if local is None:
            self.shortage = "quota"  # its own arena has no run of pages left
            return None
        self.live_bytes += slot_bytes
        return a.base + local

    def free(self, offset: int) -> None:
        a, local = self.at(offset)
        slab = a.allocator.slab_at(local)
        before = a.allocator.live_bytes
        a.allocator.free(local)
        self.live_bytes -= before - a.allocator.live_bytes
        if slab.live == 0:  # the slab's pages went back: give their memory back too
            a.memory.discard(slab.offset, slab.npages * self.page_bytes)

    def can_alloc(self, slot_bytes: int, tenant: str = "") -> bool:
        a = self.arena(tenant)
        return (a.allocator.live_bytes + slot_bytes <= self.quota_of(tenant)
                and self.live_bytes + slot_bytes <= self.capacity
                and a.allocator.can_alloc(slot_bytes))

    def same_arena(self, offset: int, tenant: str) -> bool:
        return self.at(offset)[0].tenant == tenant

    def slab_offsets(self, offset: int) -> list[int]:
        a, local = self.at(offset)
        return [a.base + o for o in a.allocator.slab_offsets(local)]

    def slot_class(self, slot_bytes: int) -> SlotClass:
        if slot_bytes <= 0:
            raise InvalidArgument("slot size must be positive")
        return SlotClass(slot_bytes, self.page_bytes, self.capacity // self.page_bytes)

    def check(self) -> None:
        total = 0
        for a in self._by_index:
            a.allocator.check()
            total += a.allocator.live_bytes
        assert total == self.live_bytes

    def close(self) -> None:
        for a in self._by_index:
            a.memory.close()
