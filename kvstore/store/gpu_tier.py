"""GPUTier: blocks in one CUDA device arena (a torch uint8 tensor + ``SlabAllocator``).

Same interface as ``CPUTier``; used as the top tier when CUDA is available and
``StoreConfig.gpu_bytes > 0``. ``view(slot)`` is a device tensor slice; host
payloads are copied in and out with ``Tensor.copy_`` (synchronous, so a slot
is never freed under an in-flight copy). Sharing with engines by CUDA IPC is
the transport's business: ``ipc_handle`` exposes the storage for it.
"""

from __future__ import annotations

from kvstore.errors import InvalidArgument
from kvstore.prefix_index import Tier
from kvstore.store.buffers import byte_view
from kvstore.store.memory_tier import MemoryTier
from kvstore.store_api import ArenaSlot


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


class GPUTier(MemoryTier):
    name = "gpu"
    tier = Tier.GPU

    def __init__(self, capacity: int, page_bytes: int = 0, device: str = "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InvalidArgument("GPU tier needs CUDA")
        super().__init__(capacity, page_bytes)
        self._torch = torch
        self.device = torch.device(device)
        self.memory = torch.empty(capacity, dtype=torch.uint8, device=self.device)

    def view(self, slot: ArenaSlot):
        return self.memory[slot.offset : slot.offset + slot.length]

    def write(self, slot: ArenaSlot, src) -> None:
        torch = self._torch
        if isinstance(src, torch.Tensor) and src.device.type == "cuda":
            flat = src.detach().reshape(-1).view(torch.uint8)
        else:
            flat = torch.frombuffer(byte_view(src), dtype=torch.uint8)
        self._check(slot, flat.numel())
        self.view(slot).copy_(flat)
        if flat.device.type != "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def read_into(self, slot: ArenaSlot, dst) -> None:
        torch = self._torch
        if isinstance(dst, torch.Tensor):
            out = dst.reshape(-1).view(torch.uint8)
        else:
            out = torch.frombuffer(byte_view(dst), dtype=torch.uint8)
        self._check(slot, out.numel())
        out.copy_(self.view(slot))
        torch.cuda.current_stream(self.device).synchronize()

    def read(self, slot: ArenaSlot) -> bytes:
        return self.view(slot).cpu().numpy().tobytes()

    def ipc_handle(self):
        return self.memory.untyped_storage()._share_cuda_()

    def close(self) -> None:
        self.memory = None
