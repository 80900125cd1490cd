"""CPUTier: blocks in one shared-memory arena (``SharedArena`` + ``SlabAllocator``).

The arena file is exactly ``capacity`` bytes, so the capacity is a hard limit
by construction; the store evicts (through the tier's policy) when ``alloc``
finds no room. A colocated client maps the file by ``info().path`` and reads
or writes the ``ArenaSlot``s of its leases directly.

Copies are single ``memcpy``s: ``memoryview`` slice assignment between flat
byte views, no per-byte Python work.
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

    def info(self) -> ArenaInfo:
        return ArenaInfo(self.arena.path, self.arena.size)

    def view(self, slot: ArenaSlot) -> memoryview:
        return self._view[slot.offset : slot.offset + slot.length]

    def write(self, slot: ArenaSlot, src) -> None:
        data = byte_view(src)
        self._check(slot, len(data))
        self._view[slot.offset : slot.offset + slot.length] = data

    def read_into(self, slot: ArenaSlot, dst) -> None:
        out = byte_view(dst)
        self._check(slot, len(out))
        out[:] = self._view[slot.offset : slot.offset + slot.length]

    def read(self, slot: ArenaSlot) -> bytes:
        return bytes(self._view[slot.offset : slot.offset + slot.length])

    def close(self) -> None:
        self._view = None
        self.arena.close()
