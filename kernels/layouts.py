"""Engine KV-cache layouts, and how each one is seen as paged K and V views.

Every layout is turned into two strided *views* per layer (no copy), K and V,
that both the torch reference and the CUDA kernels gather from and scatter
to, so one pair of kernels serves every engine. The contract of a view:

    dim 0 is the engine block id; the other dims, read in row-major order,
    enumerate (token slot, kv head, head dim) of that block, i.e.
    view[b].reshape(block_size, H, D)[s, h] is the D values of slot s, head h.

    plain view  [num_blocks, block_size, H, D]            vLLM flash, HF, vLLM CPU vec
    tiled view  [num_blocks, *slot tiles, H, *dim tiles]  vLLM CPU amx (slots and D split)

The CUDA kernels take plain views whose head dim is contiguous (any other
strides); the torch reference takes any view (``index_select`` /
``index_copy_`` over dim 0).

vLLM CUDA flash layout (``EngineKind.VLLM_FLASH``), per layer::

    [2, num_blocks, block_size, H, D]
     |  |           |           |  '- head dim, contiguous
     |  |           |           '---- kv head
     |  |           '---------------- token slot inside the engine block
     |  '---------------------------- engine block id (the block table's values)
     '------------------------------- 0 = K, 1 = V

    k_view = cache[0], v_view = cache[1]. vLLM may hand over this logical
    shape with an HND stride order (physically [2, nb, H, bs, D]); any strides
    are fine as long as D is contiguous.

vLLM CPU backend (``EngineKind.VLLM_CPU`` for the ``vec``/``vec16`` ISAs,
``EngineKind.VLLM_CPU_AMX`` for ``amx``), per layer ``[num_blocks, H,
block_size, 2*D]`` whose per-(block, head) element order depends on the ISA:
K is stored transposed (vec) or in AMX tiles. Diagrams and measurements:
:mod:`kvstore.kernels.vllm_cpu_layout`. CPU only: the torch reference runs it.

HF transformers ``[batch, H, seq, D]`` per layer: :mod:`kvstore.kernels.hf_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels.vllm_cpu_layout import amx_views, cpu_cache_shape, vec_views
from kvstore.layout import KVLayout


class EngineKind(str, Enum):
    """Which engine's paged KV-cache layout a list of per-layer tensors has."""

    VLLM_FLASH = "vllm_flash"  # [2, num_blocks, block_size, H, D]
    VLLM_CPU = "vllm_cpu"  # [num_blocks, H, block_size, 2*D]; per (block, head) K^T [D, bs], V
    VLLM_CPU_AMX = "vllm_cpu_amx"  # same shape; K and V in AMX bf16 tiles


# vLLM CPU attention ISA (``_get_attn_isa``) -> the layout its cache write produces
CPU_ISA_KINDS = {"vec": EngineKind.VLLM_CPU, "vec16": EngineKind.VLLM_CPU,
                 "amx": EngineKind.VLLM_CPU_AMX}
CPU_KINDS = (EngineKind.VLLM_CPU, EngineKind.VLLM_CPU_AMX)


@dataclass(frozen=True)
class EngineLayout:
    """A paged engine cache: its kind and its tokens per engine block."""

    kind: EngineKind
    block_size: int

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", EngineKind(self.kind))
        except ValueError:
            kinds = ", ".join(k.value for k in EngineKind)
            raise InvalidArgument(f"unknown engine kind {self.kind!r}; known: {kinds}") from None
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise InvalidArgument(f"block_size must be a positive int, got {self.block_size!r}")

    @classmethod
    def vllm_flash(cls, block_size: int = 16) -> EngineLayout:
        return cls(EngineKind.VLLM_FLASH, block_size)

    @classmethod
    def vllm_cpu(cls, block_size: int = 32, isa: str = "vec") -> EngineLayout:
        """vLLM's CPU backend whose attention runs ISA ``isa`` (vLLM's name for it)."""
        kind = CPU_ISA_KINDS.get(isa)
        if kind is None:
            raise InvalidArgument(f"no measured vLLM CPU layout for ISA {isa!r}; "
                                  f"known: {', '.join(CPU_ISA_KINDS)}")
        return cls(kind, block_size)

    @property
    def cpu_only(self) -> bool:
        """True for the vLLM CPU layouts, which the CUDA kernels do not take."""
        return self.kind in CPU_KINDS

    def cache_shape(self, num_blocks: int, layout: KVLayout) -> tuple[int, ...]:
        """Shape of one layer's cache tensor holding ``num_blocks`` engine blocks."""
        bs, H, D = self.block_size, layout.num_kv_heads, layout.head_dim
        if self.kind is EngineKind.VLLM_FLASH:
            return (2, num_blocks, bs, H, D)
        return cpu_cache_shape(num_blocks, bs, H, D)

    def num_blocks(self, cache: torch.Tensor) -> int:
        return cache.shape[0] if self.cpu_only else cache.shape[1]

    def kv_views(self, cache: torch.Tensor, layout: KVLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_view, v_view)`` of one layer (see the module docstring for their dims)."""
        if cache.dim() == 0:
            raise LayoutMismatch("a layer's cache must be a tensor with dimensions")
        expected = self.cache_shape(self.num_blocks(cache), layout)
        if tuple(cache.shape) != expected:
            raise LayoutMismatch(
                f"{self.kind.value} cache with block_size {self.block_size} must have shape "
                f"{expected} (any num_blocks), got {tuple(cache.shape)}")
        if cache.dtype != layout.torch_dtype:
            raise LayoutMismatch(f"cache dtype {cache.dtype} != layout dtype {layout.dtype}")
        bs, H, D = self.block_size, layout.num_kv_heads, layout.head_dim
        if self.kind is EngineKind.VLLM_CPU:
            return vec_views(cache, bs, H, D)
        if self.kind is EngineKind.VLLM_CPU_AMX:
            return amx_views(cache, bs, H, D)
        if cache.stride(-1) != 1:
            raise LayoutMismatch("the head dim of a cache must be contiguous (stride 1)")
        return cache[0], cache[1]
