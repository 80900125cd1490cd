"""Which paged layout a vLLM engine's registered KV caches have, decided at start.

vLLM hands the connector one tensor per attention layer
(``register_kv_caches``); its attention backend decided the shape:

=========================  ==========================  ===================================
backend                    logical shape per layer     served as
=========================  ==========================  ===================================
FlashAttention (CUDA)      ``[2, nb, bs, H, D]``       ``EngineKind.VLLM_FLASH`` as is
FlashInfer (CUDA)          ``[nb, 2, bs, H, D]``       ``VLLM_FLASH`` of ``cache.transpose(0, 1)``
CPU attention              ``[nb, H, bs, 2*D]``        ``VLLM_CPU`` / ``VLLM_CPU_AMX`` by ISA
                                                       (``vllm_cpu_paged.select_layout``)
=========================  ==========================  ===================================

vLLM may allocate a flash cache with an HND stride order (physically
``[.., H, bs, D]``, FlashInfer's default) and hand it over permuted back to
the logical shape: the kernels take any strides whose head dim is contiguous,
so NHD and HND are the same engine kind with different strides (a view, no
copy). The kernels run on the tensor's device: the CUDA kernels on a GPU, the
torch reference on CPU flash-layout caches (how CI runs this path).

Anything else is refused by :func:`flash_views` / :func:`classify` with a
message that names the cache: an fp8 KV cache (``kv_cache_dtype="fp8"``,
stored as bytes), MLA's ``[nb, bs, D]`` latent cache, a non-contiguous head
dim, a CPU layout on a GPU, layers that disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.errors import LayoutMismatch
from kvstore.kernels import EngineLayout

FLASH = "flash"  # [2, nb, bs, H, D]
FLASHINFER = "flashinfer"  # [nb, 2, bs, H, D]
CPU = "cpu"  # [nb, H, bs, 2*D], ISA-dependent order
SERVED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _classify_one(cache: torch.Tensor, block_size: int, H: int, D: int) -> str | None:
    shape = tuple(cache.shape)
    if len(shape) == 5 and shape[2:] == (block_size, H, D):
        if shape[0] == 2:
            return FLASH
        if shape[1] == 2:
            return FLASHINFER
    if len(shape) == 4 and shape[1:] == (H, block_size, 2 * D):
        return CPU
    return None


def classify(caches: Sequence[torch.Tensor], block_size: int, num_kv_heads: int,
             head_dim: int, dtype: torch.dtype) -> str:
    """``FLASH``, ``FLASHINFER`` or ``CPU`` for vLLM's registered ``caches`` (one per
    layer), or ``LayoutMismatch`` saying why the connector cannot serve them."""
    H, D, bs = num_kv_heads, head_dim, block_size
    if dtype not in SERVED_DTYPES:
        raise LayoutMismatch(
            f"KVStoreConnector cannot serve a KV cache of dtype {dtype} (an fp8 KV cache, "
            f"kv_cache_dtype='fp8', is not served; use the store's fp8_e4m3 codec instead): "
            f"it serves float16, bfloat16 and float32 caches")
    kinds = set()
    for i, cache in enumerate(caches):
        kind = _classify_one(cache, bs, H, D)
        if kind is None:
            raise LayoutMismatch(
                f"KVStoreConnector cannot serve layer {i}'s KV cache of shape "
                f"{tuple(cache.shape)} on {cache.device}: it serves vLLM's FlashAttention "
                f"[2, num_blocks, {bs}, {H}, {D}] and FlashInfer [num_blocks, 2, {bs}, {H}, {D}] "
                f"caches (NHD or HND strides) and the CPU backend's "
                f"[num_blocks, {H}, {bs}, {2 * D}] (MLA latent caches are not served)")
        if cache.dtype != dtype:
            raise LayoutMismatch(
                f"KVStoreConnector cannot serve layer {i}'s KV cache of dtype {cache.dtype}: "
                f"the model's KV dtype is {dtype} (an fp8 KV cache, kv_cache_dtype='fp8', "
                f"is not served; use the store's fp8_e4m3 codec instead)")
        if kind == CPU and cache.device.type != "cpu":
            raise LayoutMismatch(f"layer {i}: a vLLM CPU-layout cache on {cache.device}")
        if kind != CPU and cache.stride(-1) != 1:
            raise LayoutMismatch(f"layer {i}: the head dim of a flash cache must be contiguous, "
                                 f"strides {tuple(cache.stride())}")
        kinds.add(kind)
    if len(kinds) != 1:
        raise LayoutMismatch(f"KVStoreConnector: the layers' caches have different layouts "
                             f"({', '.join(sorted(kinds))})")
    devices = {c.device for c in caches}
    if len(devices) != 1:
        raise LayoutMismatch(f"KVStoreConnector: the layers' caches are on several devices "
                             f"{sorted(map(str, devices))}")
    return kinds.pop()


def flash_views(caches: Sequence[torch.Tensor], kind: str) -> list[torch.Tensor]:
    """``[2, nb, bs, H, D]`` views (no copy) of FlashAttention / FlashInfer caches."""
    if kind == FLASH:
        return list(caches)
    if kind == FLASHINFER:
        return [c.transpose(0, 1) for c in caches]
    raise LayoutMismatch(f"not a flash layout: {kind}")


def strides_name(view: torch.Tensor) -> str:
    """``"NHD"`` or ``"HND"``: the physical order of slots and heads of a flash view."""
    return "HND" if view.stride(2) < view.stride(3) else "NHD"


def flash_engine(block_size: int) -> EngineLayout:
    return EngineLayout.vllm_flash(block_size)
