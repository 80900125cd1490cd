"""ResidentPages: which arena pages hold memory, kept warm for reuse within the tier's capacity.

A page of an anonymous memory file costs nothing until it is first written;
that first write is a page fault, and in a virtual machine a fault on memory
the guest never touched is a trip to the host: here 0.2-0.4 GB/s against
3-10 GB/s for a page that is already there. If every slab that empties gave
its pages back at once (``MADV_REMOVE``), a store at steady state (evicting
as fast as it stores) would pay that first-touch price on every put, in the
daemon and again in each client's mapping.

So a slab that empties keeps its pages (they stay mapped in every process
that mapped them, and hold the same tenant's old bytes: each tenant has its
own memory file, so nothing crosses tenants). Pages are given back only when
the pages holding memory, over all tenants' arenas, would exceed the tier's
capacity: free pages of other tenants go first, then the tenant's own::

    tenant a | live | live | warm | warm |      |      |   (warm: free, memory kept)
    tenant b | live | warm |      |      |      |      |
             resident bytes = (live + warm pages) x page_bytes  <=  capacity

With one tenant the arena is ``capacity`` bytes, so nothing is ever given
back; with several, memory follows the tenants that write.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class ResidentPages:
    """The resident pages of one tenant arena (bookkeeping only: ``discard`` frees memory)."""

    def __init__(self, num_pages: int, page_bytes: int, discard: Callable[[int, int], None]):
        self.page_bytes = page_bytes
        self._resident = np.zeros(num_pages, dtype=bool)
        self._discard = discard

    @property
    def nbytes(self) -> int:
        return int(self._resident.sum()) * self.page_bytes

    def touch(self, start_page: int, npages: int) -> int:
        """Pages ``[start, start + n)`` now hold a slab: the bytes newly resident."""
        run = self._resident[start_page : start_page + npages]
        fresh = int(npages - run.sum())
        run[:] = True
        return fresh * self.page_bytes

    def give_back(self, free_mask: np.ndarray, want: int) -> int:
        """Discard free resident pages (``free_mask``: pages no slab holds) until ``want``
        bytes went back or none are left; returns the bytes given back."""
        candidates = np.flatnonzero(self._resident & free_mask)
        runs = np.split(candidates, np.flatnonzero(np.diff(candidates) != 1) + 1)
        given = 0
        for run in runs:
            if given >= want or not run.size:
                break
            n = min(run.size, -(-(want - given) // self.page_bytes))
            given += self._drop(int(run[0]), int(run[n - 1]))
        return given

    def _drop(self, first: int, last: int) -> int:
        self._discard(first * self.page_bytes, (last - first + 1) * self.page_bytes)
        self._resident[first : last + 1] = False
        return (last - first + 1) * self.page_bytes
