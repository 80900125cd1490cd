"""CPUTier: blocks in shared memory, one arena per tenant (``TenantArenas`` + ``SlabAllocator``s).

The live bytes of all tenants together never exceed ``capacity`` (a hard
limit); each tenant is also held to its quota. The store evicts (through the
tier's policy) when ``alloc`` finds no room, and ``shortage`` tells it whose
blocks may go (``kvstore.store.quotas``). A colocated client receives the
descriptor of its own tenant's arena (``arena_of(tenant)``) and reads or
writes the ``ArenaSlot``s of its leases directly, at ``offset - arena.base``.

Copies are single ``memcpy``s: ``memoryview`` slice assignment between flat
byte views, no per-byte Python work; a device tensor is copied into its
slot once (device-to-host, DMA when a CUDA engine pinned the arena).
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
        self._pending: dict[int, object] = {}  # offset -> event of a demotion copy in flight

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
    def expect(self, slot: ArenaSlot, event) -> None:
        self._pending[slot.offset] = event

    def settle(self, slot: ArenaSlot) -> None:
        if self._pending:
            event = self._pending.pop(slot.offset, None)
            if event is not None:
                event.synchronize()

    def view(self, slot: ArenaSlot) -> memoryview:
        self.settle(slot)  # a demoted GPU block lands before anyone reads its slot
        a, local = self.allocator.at(slot.offset)
        return a.view[local : local + slot.length]

    def free(self, slot: ArenaSlot) -> None:
        self.settle(slot)  # no copy in flight writes a slot handed out again
        super().free(slot)

    def write(self, slot: ArenaSlot, src) -> None:
        if type(src).__name__ == "Tensor" and src.device.type != "cpu":
            # a device tensor (a GPU-tier block moving down): one copy into the slot,
            # a DMA once the arena is registered (kvstore.kernels.pinning)
            import torch

            flat = src.detach().reshape(-1).view(torch.uint8)
            self._check(slot, flat.numel())
            torch.frombuffer(self.view(slot), dtype=torch.uint8).copy_(flat)
            return
        data = byte_view(src)
        self._check(slot, len(data))
        self.view(slot)[:] = data

    def read_into(self, slot: ArenaSlot, dst) -> None:
        self.settle(slot)
        out = byte_view(dst)
        self._check(slot, len(out))
        out[:] = self.view(slot)

    def read(self, slot: ArenaSlot) -> bytes:
        self.settle(slot)
        return bytes(self.view(slot))

    def close(self) -> None:
        for event in self._pending.values():
            event.synchronize()
        self._pending.clear()
        self.allocator.close()
