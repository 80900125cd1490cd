"""CPUTier: blocks in one shared-memory arena (``SharedArena`` + ``SlabAllocator``).

The arena file is exactly ``capacity`` bytes, so the capacity is a hard limit
by construction; the store evicts (through the tier's policy) when ``alloc``
finds no room. A colocated client maps the file by ``info().path`` and reads
or writes the ``ArenaSlot``s of its leases directly.

Copies are single ``memcpy``s: ``memoryview`` slice assignment between flat
byte views, no per-byte Python work; a device tensor is copied into its
slot once (device-to-host, DMA when a CUDA engine pinned the arena).
"""

from __future__ import annotations

from kvstore.prefix_index import Tier
from kvstore.store.buffers import byte_view
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.shm_arena import SharedArena
from kvstore.store_api import ArenaInfo, ArenaSlot


class CPUTier(MemoryTier):
    name = "cpu"
    tier = Tier.CPU

    def __init__(self, capacity: int, page_bytes: int = 0, directory: str = "/dev/shm"):
        super().__init__(capacity, page_bytes)
        self.arena = SharedArena(capacity, directory)
        self._view = self.arena.view
        self._pending: dict[int, object] = {}  # offset -> event of a demotion copy in flight

    def info(self) -> ArenaInfo:
        return ArenaInfo(self.arena.path, self.arena.size)

    def expect(self, slot: ArenaSlot, event) -> None:
        self._pending[slot.offset] = event

    def settle(self, slot: ArenaSlot) -> None:
        if self._pending:
            event = self._pending.pop(slot.offset, None)
            if event is not None:
                event.synchronize()

    def view(self, slot: ArenaSlot) -> memoryview:
        self.settle(slot)  # a demoted GPU block lands before anyone reads its slot
        return self._view[slot.offset : slot.offset + slot.length]

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
        self._view[slot.offset : slot.offset + slot.length] = data

    def read_into(self, slot: ArenaSlot, dst) -> None:
        self.settle(slot)
        out = byte_view(dst)
        self._check(slot, len(out))
        out[:] = self._view[slot.offset : slot.offset + slot.length]

    def read(self, slot: ArenaSlot) -> bytes:
        self.settle(slot)
        return bytes(self._view[slot.offset : slot.offset + slot.length])

    def close(self) -> None:
        for event in self._pending.values():
            event.synchronize()
        self._pending.clear()
        self._view = None
        self.arena.close()
