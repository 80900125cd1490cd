"""CPUTier: blocks in shared memory, one arena per tenant (``TenantArenas`` + ``SlabAllocator``s).

The live bytes of all tenants together never exceed ``capacity`` (a hard
limit); each tenant is also held to its quota. The store evicts (through the
tier's policy) when ``alloc`` finds no room, and ``shortage`` tells it whose
blocks may go (``kvstore.store.quotas``). A colocated client receives the
descriptor of its own tenant's arena (``arena_of(tenant)``) and reads or
writes the ``ArenaSlot``s of its leases directly, at ``offset - arena.base``.

Copies are single ``memcpy``s: ``memoryview`` slice assignment between flat
byte views, no per-byte Python work.
"""

from __future__ import annotations

from collections.abc import Callable

from kvstore.prefix_index import Tier
from kvstore.store.buffers import byte_view
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.tenant_arenas import TenantArena, TenantArenas
from kvstore.store_api import ArenaInfo, ArenaSlot


class CPUTier(MemoryTier):
    name = "cpu"
    tier = Tier.CPU

    def __init__(self, capacity: int, page_bytes: int = 0, directory: str = "/dev/shm",
                 quota_of: Callable[[str], int] | None = None):
        super().__init__(capacity, page_bytes)
        self.allocator = TenantArenas(capacity, page_bytes, quota_of)
        self.directory = directory  # unused: arenas are memory files (kept for settings)

    # -- tenants ----------------------------------------------------------------
    def arena_of(self, tenant: str = "") -> TenantArena:
        return self.allocator.arena(tenant)

    @property
    def arena(self) -> TenantArena:
        """The default tenant's arena (single-tenant daemons, tests)."""
        return self.arena_of("")

    def alloc(self, nbytes: int, tenant: str = "") -> ArenaSlot | None:
        offset = self.allocator.alloc(nbytes, tenant)
        if offset is None:
            return None
        self._owner[offset] = None
        return ArenaSlot(offset, nbytes)

    def can_alloc(self, nbytes: int, tenant: str = "") -> bool:
        return self.allocator.can_alloc(nbytes, tenant)

    @property
    def shortage(self) -> str:
        return self.allocator.shortage

    def info(self, tenant: str = "") -> ArenaInfo:
        a = self.arena_of(tenant)
        return ArenaInfo(a.path, a.size)

    # -- bytes --------------------------------------------------------------------
    def view(self, slot: ArenaSlot) -> memoryview:
        a, local = self.allocator.at(slot.offset)
        return a.view[local : local + slot.length]

    def write(self, slot: ArenaSlot, src) -> None:
        data = byte_view(src)
        self._check(slot, len(data))
        self.view(slot)[:] = data

    def read_into(self, slot: ArenaSlot, dst) -> None:
        out = byte_view(dst)
        self._check(slot, len(out))
        out[:] = self.view(slot)

    def read(self, slot: ArenaSlot) -> bytes:
        return bytes(self.view(slot))

    def close(self) -> None:
        self.allocator.close()
