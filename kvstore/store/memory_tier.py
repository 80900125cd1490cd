"""MemoryTier: a slab-allocated block arena (the CPU tier and the GPU tier share it).

A memory tier is an arena plus a ``SlabAllocator``; it hands out ``ArenaSlot``s
and copies bytes in and out. It knows nothing about keys or prefixes: the
store decides what to evict and tells the tier which slot to free. ``owner``
maps a slot's offset back to whoever the store said owns it, so the store can
reclaim whole slabs.

Concrete tiers implement ``_write``/``_read_into``/``view`` over their memory
(``CPUTier``: a shared-memory file; ``GPUTier``: a CUDA byte tensor).
"""

from __future__ import annotations

from typing import Any

from kvstore.errors import InvalidArgument
from kvstore.prefix_index import Tier
from kvstore.store.slab import SlabAllocator
from kvstore.store_api import ArenaSlot, TierStats


class MemoryTier:
    name = "memory"
    tier = Tier.CPU

    def __init__(self, capacity: int, page_bytes: int = 0):
        self.capacity_bytes = capacity
        self.allocator = SlabAllocator(capacity, page_bytes)
        self._owner: dict[int, Any] = {}
        self.stats = TierStats(self.name, capacity, 0, 0)

    # -- slots --------------------------------------------------------------
    shortage = "global"  # why the last alloc failed (a partitioned tier: "quota" too)

    def alloc(self, nbytes: int, tenant: str = "") -> ArenaSlot | None:
        """A free slot (``tenant``: whose; a tier shared by all tenants ignores it)."""
        offset = self.allocator.alloc(nbytes)
        if offset is None:
            return None
        self._owner[offset] = None
        return ArenaSlot(offset, nbytes)

    def free(self, slot: ArenaSlot) -> None:
        self.allocator.free(slot.offset)
        self._owner.pop(slot.offset, None)

    def set_owner(self, slot: ArenaSlot, owner: Any) -> None:
        self._owner[slot.offset] = owner

    def owner(self, offset: int) -> Any:
        return self._owner.get(offset)

    def slab_owners(self, slot: ArenaSlot) -> list[Any]:
        """Owners of every live slot in ``slot``'s slab (None for reserved slots)."""
        return [self._owner.get(o) for o in self.allocator.slab_offsets(slot.offset)]

    def can_alloc(self, nbytes: int, tenant: str = "") -> bool:
        return self.allocator.can_alloc(nbytes)

    def fits(self, nbytes: int) -> bool:
        """Whether a slot of ``nbytes`` could ever fit (the class can be formed)."""
        try:
            self.allocator.slot_class(nbytes)
        except Exception:
            return False
        return True

    @property
    def used_bytes(self) -> int:
        return self.allocator.live_bytes

    @property
    def blocks(self) -> int:
        return len(self._owner)

    def tier_stats(self) -> TierStats:
        s = self.stats
        s.used_bytes, s.blocks = self.used_bytes, self.blocks
        return TierStats(**vars(s))

    # -- bytes --------------------------------------------------------------
    def _check(self, slot: ArenaSlot, n: int) -> None:
        if n != slot.length:
            raise InvalidArgument(f"payload of {n} bytes for a {slot.length}-byte slot")

    def write(self, slot: ArenaSlot, src) -> None:
        raise NotImplementedError

    def read_into(self, slot: ArenaSlot, dst) -> None:
        raise NotImplementedError

    def read(self, slot: ArenaSlot) -> bytes:
        raise NotImplementedError

    def copy_out(self, slot: ArenaSlot, dst):
        """Copy the slot into ``dst`` (another tier's slot); returns None once done, or
        an event the copy completes at (a device tier's asynchronous copy: the receiving
        tier then ``expect``s it)."""
        self.read_into(slot, dst)
        return None

    def expect(self, slot: ArenaSlot, event) -> None:
        """A copy into ``slot`` completes at ``event``: nothing reads or reuses the slot
        before (``settle``)."""
        raise NotImplementedError

    def settle(self, slot: ArenaSlot) -> None:
        """Wait for a copy into ``slot`` still in flight (none by default)."""

    def close(self) -> None:
        pass
