"""Host memory for the CPU tensors ``ns.get`` returns: aligned, and reused once dropped.

``ns.get`` hands out a new tensor every call. Fresh memory costs its
first-touch faults (the kernel maps and zeroes every page as the copy first
writes it): on the development VM a third of a 64 MiB ``ns.get`` went there.
An engine that loads a prefix, uses it and drops it would pay that on every
load. ``HostBuffers`` keeps the memory of results that were dropped (up to
``keep_bytes``) and hands it out again with its pages still mapped, as
torch's CUDA caching allocator does for device memory.

A buffer comes back when the last tensor or view on it is gone: the tensor
is made from a numpy array that ``weakref.finalize`` watches. The
finalizer may run on any thread, in the middle of anything (it is a
reference count reaching zero), so it only appends to a deque; ``take``
collects what came back under the pool's lock. A buffer is handed to one
tensor at a time, never to two.

Alignment: a buffer starts on a page boundary (a huge-page boundary from
2 MiB on), as arena slots do. numpy asks for transparent huge pages on large
allocations (torch's allocator does not: a new 64 MiB buffer filled at
5.2 GB/s from numpy against 1.3 GB/s from ``torch.empty`` here), and malloc's
large blocks start 16 bytes past a page: a copy from a page-aligned slot into
a destination 16 bytes further on (mod 4 KiB) ran at about half speed on
this CPU (its loads alias the stores just made).

::

    take(nbytes) ─▶ a free buffer of capacity in [c, 2c)   (c = nbytes rounded up)
                    or a new aligned one
                 ─▶ array = buffer[:nbytes]  ──finalize(array)──▶ returned deque
    the next take: returned buffers join the free list; the oldest go
    once the free list holds more than keep_bytes
"""

from __future__ import annotations

import collections
import mmap
import os
import threading
import weakref

import numpy as np
import torch

from kvstore.sizes import parse_size

HUGE_PAGE = 2 << 20
DEFAULT_KEEP_BYTES = 512 << 20  # free memory a client process keeps for its next results
KEEP_ENV = "KVSTORE_HOST_KEEP_BYTES"


def _rounded(nbytes: int) -> int:
    unit = HUGE_PAGE if nbytes >= HUGE_PAGE else mmap.PAGESIZE
    return max(unit, -(-nbytes // unit) * unit)


def aligned_buffer(capacity: int) -> np.ndarray:
    """``capacity`` uninitialised bytes from numpy, starting on a page (huge page from 2 MiB)."""
    align = HUGE_PAGE if capacity >= HUGE_PAGE else mmap.PAGESIZE
    raw = np.empty(capacity + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + capacity]


class HostBuffers:
    def __init__(self, keep_bytes: int = DEFAULT_KEEP_BYTES):
        self.keep_bytes = keep_bytes
        self._free: list[np.ndarray] = []  # oldest first
        self._free_bytes = 0
        self._returned: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self.reused = 0  # takes served from the free list (a figure for tests and stats)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            self._collect()
            return self._free_bytes

    def take(self, nbytes: int) -> np.ndarray:
        """``nbytes`` uninitialised, aligned bytes (a uint8 array) that no live array shares."""
        capacity = _rounded(nbytes)
        with self._lock:
            self._collect()
            buffer = self._best_fit(capacity)
        if buffer is None:
            buffer = aligned_buffer(capacity)
        array = buffer[:nbytes]
        weakref.finalize(array, self._returned.append, buffer)
        return array

    def tensor(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised CPU tensor of ``shape`` over ``take``'s memory."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return torch.from_numpy(self.take(nbytes)).view(dtype).view(shape)

    def _best_fit(self, capacity: int) -> np.ndarray | None:
        """The smallest free buffer of ``capacity`` to twice that (not a much larger one:
        its unused tail would be held by a small result)."""
        best = None
        for i, buf in enumerate(self._free):
            if capacity <= buf.nbytes < 2 * capacity and (
                    best is None or buf.nbytes < self._free[best].nbytes):
                best = i
        if best is None:
            return None
        buffer = self._free.pop(best)
        self._free_bytes -= buffer.nbytes
        self.reused += 1
        return buffer

    def _collect(self) -> None:
        """Move the buffers whose arrays died to the free list; drop the oldest past the bound."""
        while self._returned:
            buffer = self._returned.popleft()
            self._free.append(buffer)
            self._free_bytes += buffer.nbytes
        while self._free_bytes > self.keep_bytes and self._free:
            self._free_bytes -= self._free.pop(0).nbytes


def _keep_bytes_from_env() -> int:
    value = os.environ.get(KEEP_ENV)
    return DEFAULT_KEEP_BYTES if value is None else parse_size(value)


HOST_BUFFERS = HostBuffers(_keep_bytes_from_env())


def host_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised, aligned CPU tensor from the process's ``HOST_BUFFERS``."""
    return HOST_BUFFERS.tensor(shape, dtype)
