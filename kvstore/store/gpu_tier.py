"""GPUTier: blocks in one CUDA device arena (a torch uint8 tensor + ``SlabAllocator``).

Same interface as ``CPUTier``; used as the top tier when CUDA is available and
``StoreConfig.gpu_bytes > 0``. Sharing with engines by CUDA IPC is the
transport's business: ``ipc_handle`` exposes the storage for it.

Copies run on the tier's own stream (``kvstore.kernels.streams``), ordered by
events, never by synchronising a whole stream:

* ``write`` from a device tensor: the tier's stream waits for the writer's
  stream (an event recorded there), then one device-to-device copy; the
  slot's *ready* event is recorded after it. From host bytes: one
  host-to-device copy, and the host waits for that copy's event only (the
  caller may reuse its buffer on return).
* ``view`` (a device tensor of the slot, e.g. to serve a hit): the caller's
  current stream first waits for the slot's ready event.
* ``read_into`` a device tensor: one device-to-device copy on the tier's
  stream, and the reader's stream waits for it (no host wait); into host
  memory: one device-to-host copy (straight into the caller's buffer, an
  arena slot when a block is demoted), the host waits for its event.
* ``read`` (bytes): one device-to-host copy into the returned buffer.
* ``copy_out`` (a demotion): one device-to-host copy straight into the CPU
  tier's slot, not waited for: its event goes to the CPU tier (``expect``),
  which waits for it before the slot is read or reused.

A slot freed and allocated again is written on the same stream as every
earlier copy out of it, so no copy in flight ever reads a reused slot.

``device="cpu"`` with a ``HostTimeline`` (tests) runs the same code on CPU
tensors and logs every copy and event.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from kvstore.errors import InvalidArgument
from kvstore.prefix_index import Tier
from kvstore.store.buffers import byte_view
from kvstore.store.memory_tier import MemoryTier
from kvstore.store_api import ArenaSlot

if TYPE_CHECKING:  # torch is imported when a GPU tier is made, not with the store
    from kvstore.kernels.streams import Event, Timeline

STREAM = "gpu-tier"


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


class GPUTier(MemoryTier):
    name = "gpu"
    tier = Tier.GPU

    def __init__(self, capacity: int, page_bytes: int = 0, device: str = "cuda",
                 timeline: Timeline | None = None):
        import torch

        from kvstore.kernels.streams import timeline_for

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidArgument("GPU tier needs CUDA")
        super().__init__(capacity, page_bytes)
        self._torch = torch
        self.timeline = timeline or timeline_for(self.device)
        self._stream = self.timeline.stream(STREAM)
        self._ready: dict[int, Event] = {}  # slot offset -> event after its last write
        self.memory = torch.empty(capacity, dtype=torch.uint8, device=self.device)

    def _slot(self, slot: ArenaSlot):
        return self.memory[slot.offset: slot.offset + slot.length]

    def _host(self, buf):
        torch = self._torch
        if isinstance(buf, torch.Tensor):
            return buf.detach().reshape(-1).view(torch.uint8)
        view = byte_view(buf)
        if view.readonly:  # only ever read (the source of a write)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.frombuffer(view, dtype=torch.uint8)
        return torch.frombuffer(view, dtype=torch.uint8)

    def _is_device(self, t) -> bool:
        """A device tensor (on a CPU test timeline with device memory: one of its
        device's tensors; host buffers come as bytes, arrays or memoryviews)."""
        if not isinstance(t, self._torch.Tensor):
            return False
        return t.device.type != "cpu" or (self.timeline.separate_memory
                                          and t.device == self.device)

    def view(self, slot: ArenaSlot):
        """The slot as a device tensor, readable on the caller's current stream."""
        tl = self.timeline
        tl.wait(tl.compute(), self._ready.get(slot.offset), "slot-ready")
        return self._slot(slot)

    def write(self, slot: ArenaSlot, src) -> None:
        tl, s = self.timeline, self._stream
        torch = self._torch
        device_src = self._is_device(src)
        flat = src.detach().reshape(-1).view(torch.uint8) if device_src else self._host(src)
        self._check(slot, flat.numel())
        if device_src:  # after the writer's stream produced it
            tl.wait(s, tl.record(tl.compute(), "written"))
        tl.copy(self._slot(slot), flat, s, "d2d" if device_src else "h2d")
        ev = tl.record(s, f"slot:{slot.offset}")
        self._ready[slot.offset] = ev
        if not device_src:
            ev.synchronize()  # the caller's host buffer may be reused on return

    def read_into(self, slot: ArenaSlot, dst) -> None:
        tl, s = self.timeline, self._stream
        torch = self._torch
        device_dst = self._is_device(dst)
        out = dst.reshape(-1).view(torch.uint8) if device_dst else self._host(dst)
        self._check(slot, out.numel())
        if device_dst:  # a device-to-device hit
            tl.wait(s, tl.record(tl.compute(), "reader"))  # the reader's earlier work on dst
            tl.wait(s, self._ready.get(slot.offset))
            tl.copy(out, self._slot(slot), s, "d2d")
            tl.wait(tl.compute(), tl.record(s, "served"))  # the reader's stream, not the host
            return
        tl.wait(s, self._ready.get(slot.offset))
        tl.copy(out, self._slot(slot), s, "d2h")
        tl.record(s, "read").synchronize()

    def copy_out(self, slot: ArenaSlot, dst):
        """Demotion: one device-to-host copy straight into ``dst`` (the arena slot of the
        tier below, registered: DMA) enqueued on the tier's stream; returns its event
        without waiting (the tier below settles it before the slot is read or reused).
        The source slot may be freed at once: its next write is on the same stream."""
        tl, s = self.timeline, self._stream
        out = self._host(dst)
        self._check(slot, out.numel())
        tl.wait(s, self._ready.get(slot.offset))
        tl.copy(out, self._slot(slot), s, "d2h")
        return tl.record(s, "demoted")

    def read(self, slot: ArenaSlot) -> bytes:
        buf = bytearray(slot.length)
        self.read_into(slot, buf)
        return buf

    def free(self, slot: ArenaSlot) -> None:
        self._ready.pop(slot.offset, None)
        super().free(slot)

    def ipc_handle(self):
        return self.memory.untyped_storage()._share_cuda_()

    def close(self) -> None:
        self.timeline.drain()
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)  # no copy in flight reads freed memory
        self.memory = None
