"""Which of the kernels' vLLM CPU layouts a running vLLM engine uses.

vLLM's CPU attention stores each (block, head) of its paged cache in an order
chosen by the ISA of its attention kernel, and vLLM picks that ISA at run time
(``_get_attn_isa``: AMX tiles present? bf16? block size and head dim multiples
of 32?). ``kvstore.kernels`` knows the measured layouts
(``kvstore.kernels.vllm_cpu_layout`` draws them: ``vec``/``vec16`` store K
transposed, ``amx`` stores bf16 tiles) and moves blocks with its fused
gather/scatter + codec; this module only decides *which* layout an engine has.

:func:`select_layout` asks vLLM itself: it writes random K/V through vLLM's own
cache-write op (``cpu_attn_reshape_and_cache``, what the attention backend's
``do_kv_cache_update`` calls) into a scratch cache, and returns the kernels'
layout that reads exactly those K/V back. If none does (an ISA measured on no
machine yet, e.g. ``neon``, or a future vLLM that changed its order) it raises
``LayoutMismatch`` instead of moving scrambled blocks.
"""

from __future__ import annotations

import torch

from kvstore.errors import LayoutMismatch
from kvstore.kernels import EngineLayout, decode, pack_paged
from kvstore.kernels.layouts import CPU_ISA_KINDS, CPU_KINDS
from kvstore.layout import KVLayout


def vllm_write(cache: torch.Tensor, isa: str, slots: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> None:
    """Write ``key``/``value`` ``[n, H, D]`` into token ``slots`` of one layer's
    ``cache`` ``[num_blocks, H, block_size, 2*D]`` exactly as vLLM's CPU attention does."""
    from vllm import _custom_ops as ops

    nb, H, bs, D2 = cache.shape
    key_cache, value_cache = cache.view(nb, H, 2 * bs, D2 // 2).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa,
                                   k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")


def select_layout(dtype: torch.dtype, isa: str, num_kv_heads: int, block_size: int,
                  head_dim: int) -> EngineLayout:
    """The kernels' layout of vLLM CPU caches of this geometry under ``isa``.

    Candidates are tried in the order of vLLM's ISA name first (``vec`` ->
    ``vllm_cpu``, ``amx`` -> ``vllm_cpu_amx``), then the others.
    """
    H, bs, D = num_kv_heads, block_size, head_dim
    g = torch.Generator().manual_seed(0)
    key = torch.randn(bs, H, D, generator=g).to(dtype)
    value = torch.randn(bs, H, D, generator=g).to(dtype)
    cache = torch.zeros(3, H, bs, 2 * D, dtype=dtype)
    vllm_write(cache, isa, torch.arange(bs, 2 * bs), key, value)  # engine block 1
    want = torch.stack([key, value]).unsqueeze(0)  # canonical [L=1, 2, bs, H, D]
    layout = KVLayout("probe", 1, H, D, str(dtype).removeprefix("torch."), bs)
    first = CPU_ISA_KINDS.get(isa)
    kinds = ([first] if first else []) + [k for k in CPU_KINDS if k is not first]
    for kind in kinds:
        engine = EngineLayout(kind, bs)
        try:
            payload = pack_paged([cache], [1], layout, "none", engine)[0]
        except LayoutMismatch:  # e.g. the AMX layout for a dtype other than bf16
            continue
        if torch.equal(decode(payload, layout, "none").view(torch.uint8),
                       want.view(torch.uint8)):
            return engine
    raise LayoutMismatch(
        f"vLLM's CPU cache write (isa {isa!r}, {dtype}, block_size {bs}, head_dim {D}) "
        f"matches none of the layouts kvstore.kernels knows "
        f"({', '.join(k.value for k in CPU_KINDS)})")
