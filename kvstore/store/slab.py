"""SlabAllocator: fixed-size slots of a few sizes in one arena, without fragmentation.

The arena is cut into equal pages. A *slot class* exists per slot size (one
per namespace: every block of a namespace has the same size). A class carves
*slabs* out of free pages: a slab is a run of ``k`` contiguous pages cut into
``floor(k * page / stride)`` slots, ``k`` chosen so that at most 1/8 of the
slab is left over (an 80 MiB block on 64 MiB pages gets k = 4 pages holding 3
slots, not k = 2 holding 1)::

    arena  | page 0 | page 1 | page 2 | page 3 | page 4 | page 5 | ... | page N-1 |
           |<- slab A (32 MiB class)->|<----------- slab B (80 MiB class) ------->
           [ s0 ][ s1 ][ s2 ][ s3 ]   [   s0   ][   s1   ][   s2   ]   (waste)
              page-aligned; single-page slabs are taken from the low end of the
              arena, multi-page slabs from the high end, so they rarely interleave

* A slot is found in O(1) amortised: each class keeps the partial slabs in a
  heap by address and hands out the lowest one first, so allocations pack into
  few slabs and sparse ones drain.
* A slab whose last slot is freed returns its pages to the free pool at once;
  any class may take them next. This is the rebalancing: pages follow demand
  between classes, and since every slab is whole pages and every slot in a
  class has one size, there is no external fragmentation to accumulate
  (waste is bounded: < 1/8 per slab plus at most one partial slab per class).
* The only contiguity need is a multi-page slab; when the pages are free but
  not contiguous, ``alloc`` fails and the tier evicts (whole slabs first, see
  ``slab_offsets``) until a run opens.

The allocator is bookkeeping only (offsets); the caller owns the memory and
the locking.
"""

from __future__ import annotations

import heapq

import numpy as np

from kvstore.errors import CapacityError, InvalidArgument

ALIGN = 256  # slot stride alignment (cache lines; CUDA copies like 256)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def auto_page_bytes(capacity: int) -> int:
    """Largest power of two <= min(64 MiB, capacity / 32), at least 4 KiB."""
    target = max(4096, min(64 << 20, capacity // 32))
    return 1 << (target.bit_length() - 1)


class Slab:
    __slots__ = ("start_page", "npages", "cls", "offset", "used", "free", "live", "in_heap")

    def __init__(self, start_page: int, npages: int, cls: SlotClass, page_bytes: int):
        self.start_page = start_page
        self.npages = npages
        self.cls = cls
        self.offset = start_page * page_bytes
        self.used = bytearray(cls.slots_per_slab)
        self.free = list(range(cls.slots_per_slab - 1, -1, -1))  # pop() gives slot 0 first
        self.live = 0
        self.in_heap = False


class SlotClass:
    def __init__(self, slot_bytes: int, page_bytes: int, num_pages: int):
        self.slot_bytes = slot_bytes
        self.stride = _round_up(slot_bytes, ALIGN)
        k_min = -(-self.stride // page_bytes)
        if k_min > num_pages:
            raise CapacityError(
                f"a {slot_bytes}-byte block does not fit in an arena of {num_pages} "
                f"pages of {page_bytes} bytes"
            )
        best = None
        for k in range(k_min, min(k_min + 16, num_pages) + 1):
            waste = (k * page_bytes % self.stride) / (k * page_bytes)
            if best is None or waste < best[1] - 1e-12:
                best = (k, waste)
            if waste <= 0.125:
                best = (k, waste)
                break
        self.pages_per_slab = best[0]
        self.slots_per_slab = best[0] * page_bytes // self.stride
        self.slabs: dict[int, Slab] = {}  # start page -> slab
        self.partial: list[int] = []  # heap of start pages of slabs with free slots
        self.live = 0


class SlabAllocator:
    def __init__(self, capacity: int, page_bytes: int = 0):
        page_bytes = page_bytes or auto_page_bytes(capacity)
        if page_bytes <= 0 or page_bytes % 4096:
            raise InvalidArgument("page_bytes must be a positive multiple of 4096")
        if page_bytes > capacity:
            raise InvalidArgument(f"page of {page_bytes} bytes exceeds capacity {capacity}")
        self.capacity = capacity
        self.page_bytes = page_bytes
        self.num_pages = capacity // page_bytes
        self._free_pages = np.ones(self.num_pages, dtype=bool)
        self._owner: list[Slab | None] = [None] * self.num_pages
        self._classes: dict[int, SlotClass] = {}
        self.live_bytes = 0

    # -- classes ------------------------------------------------------------
    def slot_class(self, slot_bytes: int) -> SlotClass:
        cls = self._classes.get(slot_bytes)
        if cls is None:
            if slot_bytes <= 0:
                raise InvalidArgument("slot size must be positive")
            cls = self._classes[slot_bytes] = SlotClass(slot_bytes, self.page_bytes, self.num_pages)
        return cls

    # -- allocation ---------------------------------------------------------
    def alloc(self, slot_bytes: int) -> int | None:
        """Offset of a free slot of ``slot_bytes``, or None when no room without evicting."""
        cls = self.slot_class(slot_bytes)
        slab = self._partial_slab(cls)
        if slab is None:
            slab = self._new_slab(cls)
            if slab is None:
                return None
        idx = slab.free.pop()
        slab.used[idx] = 1
        slab.live += 1
        cls.live += 1
        self.live_bytes += slot_bytes
        return slab.offset + idx * cls.stride

    def free(self, offset: int) -> None:
        slab = self.slab_at(offset)
        cls = slab.cls
        idx, rem = divmod(offset - slab.offset, cls.stride)
        if rem or idx >= cls.slots_per_slab or not slab.used[idx]:
            raise InvalidArgument(f"offset {offset} is not an allocated slot")
        slab.used[idx] = 0
        slab.free.append(idx)
        slab.live -= 1
        cls.live -= 1
        self.live_bytes -= cls.slot_bytes
        if slab.live == 0:
            self._release_slab(slab)
        elif not slab.in_heap:
            slab.in_heap = True
            heapq.heappush(cls.partial, slab.start_page)

    def can_alloc(self, slot_bytes: int) -> bool:
        cls = self.slot_class(slot_bytes)
        if any(cls.slabs[p].free for p in cls.partial if p in cls.slabs):
            return True
        return self._find_run(cls.pages_per_slab) is not None

    # -- introspection ------------------------------------------------------
    def slab_at(self, offset: int) -> Slab:
        page = offset // self.page_bytes
        slab = self._owner[page] if 0 <= page < self.num_pages else None
        if slab is None:
            raise InvalidArgument(f"offset {offset} is not in a slab")
        return slab

    def slab_offsets(self, offset: int) -> list[int]:
        """Offsets of every allocated slot in the slab holding ``offset``."""
        slab = self.slab_at(offset)
        stride = slab.cls.stride
        return [slab.offset + i * stride for i, u in enumerate(slab.used) if u]

    @property
    def free_pages(self) -> int:
        return int(self._free_pages.sum())

    def free_page_mask(self) -> np.ndarray:
        """A copy of the per-page mask of pages no slab holds."""
        return self._free_pages.copy()

    @property
    def used_pages(self) -> int:
        return self.num_pages - self.free_pages

    def check(self) -> None:
        """Assert the bookkeeping is consistent (tests)."""
        owned = 0
        for cls in self._classes.values():
            live = 0
            for start, slab in cls.slabs.items():
                assert slab.start_page == start and slab.live > 0
                assert slab.live == sum(slab.used) == cls.slots_per_slab - len(slab.free)
                for p in range(start, start + slab.npages):
                    assert self._owner[p] is slab and not self._free_pages[p]
                owned += slab.npages
                live += slab.live
            assert live == cls.live
        assert owned == self.used_pages
        assert self.live_bytes == sum(c.live * c.slot_bytes for c in self._classes.values())

    # -- internals ----------------------------------------------------------
    def _partial_slab(self, cls: SlotClass) -> Slab | None:
        while cls.partial:
            start = cls.partial[0]
            slab = cls.slabs.get(start)
            if slab is not None and slab.free:
                return slab
            heapq.heappop(cls.partial)
            if slab is not None:
                slab.in_heap = False
        return None

    def _find_run(self, k: int) -> int | None:
        free = self._free_pages
        if k == 1:
            idx = int(np.argmax(free))
            return idx if free[idx] else None
        if free.sum() < k:
            return None
        window = np.convolve(free.astype(np.int32), np.ones(k, dtype=np.int32), "valid")
        hits = np.flatnonzero(window == k)
        return int(hits[-1]) if hits.size else None  # high end for multi-page slabs

    def _new_slab(self, cls: SlotClass) -> Slab | None:
        start = self._find_run(cls.pages_per_slab)
        if start is None:
            return None
        slab = Slab(start, cls.pages_per_slab, cls, self.page_bytes)
        self._free_pages[start : start + slab.npages] = False
        for p in range(start, start + slab.npages):
            self._owner[p] = slab
        cls.slabs[start] = slab
        slab.in_heap = True
        heapq.heappush(cls.partial, start)
        return slab

    def _release_slab(self, slab: Slab) -> None:
        cls = slab.cls
        del cls.slabs[slab.start_page]
        self._free_pages[slab.start_page : slab.start_page + slab.npages] = True
        for p in range(slab.start_page, slab.start_page + slab.npages):
            self._owner[p] = None
        # a stale heap entry may remain; _partial_slab skips it
