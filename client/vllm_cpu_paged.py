"""vLLM's CPU paged KV cache, and moving whole blocks between it and the store.

vLLM's CPU attention backend (``vllm/v1/attention/backends/cpu_attn.py``)
allocates one tensor per attention layer::

    kv_cache: [num_blocks, num_kv_heads, block_size, 2 * head_size]

but that shape is only a size: the backend views it as ``[num_blocks, H,
2 * block_size, D]``, chunks dim 2 into a key half and a value half, and its C++
op ``cpu_attn_reshape_and_cache`` writes each half in an order chosen by the
ISA of the attention kernel. Measured with vLLM 0.32 (see
``tests/client/test_vllm_cpu_paged.py``), for one (block, head)::

    one engine block, contiguous: [ head 0 | head 1 | ... | head H-1 ]
    one head:                     [ K half: bs*D values | V half: bs*D values ]

    isa "vec"/"vec16" (fp32, fp16, bf16 without AMX):
        K half = K transposed  [D, bs]        (dim-major: k[t0,d0] k[t1,d0] ...)
        V half = V             [bs, D]        (token-major)
    isa "amx" (bf16 with AMX tiles):
        K half = [bs/16, D/2, 16, 2]          (VNNI pairs of dims, 16-token tiles)
        V half = [bs/2, D, 2]                 (VNNI pairs of tokens)

So ``cache[b, h, t, :D]`` is *not* the key of token t, and the order differs
between machines. Rather than hard-code one ISA's order, ``CpuPagedLayout``
*measures* it: it runs vLLM's own write op on a scratch block whose K and V
values encode their canonical positions (one base-16 digit per run, values
1..16 are exact in every float dtype) and reads back where each element
landed. The result is a permutation ``perm`` of the ``E = H * bs * 2 * D``
elements of an engine block such that::

    engine_block.flatten()[perm[i]] == canonical_block.flatten()[i]
    canonical_block: [2, bs, H, D]   (key/value, token, head, dim)

Gather (save) and scatter (load) are then two ``index_select``/``index_copy_``
calls per layer: rows by block id, columns by ``perm``; no Python loop over
tokens. Where ``perm`` is affine in (token, head, dim), as for "vec", the
column gather becomes two strided-view copies (``affine_strides``), several
times faster. ``gather_blocks``/``scatter_blocks`` are the one seam to swap for a
``kvstore.kernels`` pack/unpack once it supports this layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstore.errors import LayoutMismatch

_BASE = 16  # one digit per probe run; 1..16 are exact in fp8/fp16/bf16/fp32


def _write_op():
    from vllm import _custom_ops as ops

    return ops.cpu_attn_reshape_and_cache


def probe_permutation(dtype: torch.dtype, isa: str, num_kv_heads: int, block_size: int,
                      head_dim: int) -> torch.Tensor:
    """``perm`` (int64, length ``E``): engine position of each canonical element.

    Runs vLLM's ``cpu_attn_reshape_and_cache`` on a one-block scratch cache,
    once per base-16 digit of the canonical index; raises LayoutMismatch if the
    op leaves an element unwritten or writes two elements to one place.
    """
    write = _write_op()
    H, bs, D = num_kv_heads, block_size, head_dim
    E = 2 * bs * H * D
    canon = torch.arange(E, dtype=torch.int64).view(2, bs, H, D)
    code = torch.zeros(E, dtype=torch.int64)  # code[p]: canonical index found at engine position p
    place = 1
    while place < E:
        digit = (canon // place) % _BASE + 1
        cache = torch.zeros(1, H, bs, 2 * D, dtype=dtype)
        key_cache, value_cache = cache.view(1, H, 2 * bs, D).chunk(2, dim=2)
        write(digit[0].to(dtype).contiguous(), digit[1].to(dtype).contiguous(), key_cache,
              value_cache, torch.arange(bs, dtype=torch.int64), isa,
              k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")
        got = cache.view(-1).float().round().to(torch.int64) - 1
        if got.min() < 0 or got.max() >= _BASE:
            raise LayoutMismatch(f"vLLM CPU cache write ({isa}, {dtype}) is not a permutation")
        code += got * place
        place *= _BASE
    if not torch.equal(code.sort().values, torch.arange(E)):
        raise LayoutMismatch(f"vLLM CPU cache write ({isa}, {dtype}) is not a permutation")
    perm = torch.empty(E, dtype=torch.int64)
    perm[code] = torch.arange(E, dtype=torch.int64)
    return perm


Strides = tuple[int, int, int, int]  # (offset, token, head, dim) within one engine block


def affine_strides(perm: torch.Tensor, block_size: int, num_kv_heads: int,
                   head_dim: int) -> tuple[Strides, Strides] | None:
    """K's and V's place as strided views of a block, if ``perm`` is affine in (t, h, d).

    True for "vec"/"vec16" (K^T and V are plain strided views); then copies
    go through ``as_strided`` at memcpy-like speed instead of an element
    gather. ``None`` (e.g. "amx", whose VNNI tiles split t and d) keeps the
    generic ``perm`` gather.
    """
    grid = perm.view(2, block_size, num_kv_heads, head_dim)
    t = torch.arange(block_size).view(-1, 1, 1)
    h = torch.arange(num_kv_heads).view(1, -1, 1)
    d = torch.arange(head_dim).view(1, 1, -1)
    halves = []
    for half in grid:
        off = int(half[0, 0, 0])
        st = int(half[1, 0, 0]) - off if block_size > 1 else 0
        sh = int(half[0, 1, 0]) - off if num_kv_heads > 1 else 0
        sd = int(half[0, 0, 1]) - off if head_dim > 1 else 0
        if not torch.equal(half, off + t * st + h * sh + d * sd):
            return None
        halves.append((off, st, sh, sd))
    return halves[0], halves[1]


@dataclass(frozen=True)
class CpuPagedLayout:
    """Geometry of one vLLM CPU paged cache and its measured in-block element order."""

    num_kv_heads: int
    block_size: int
    head_dim: int
    dtype: torch.dtype
    isa: str
    perm: torch.Tensor  # [E] int64, see module docstring
    strides: tuple[Strides, Strides] | None = None  # fast path, see affine_strides

    @classmethod
    def probe(cls, dtype: torch.dtype, isa: str, num_kv_heads: int, block_size: int,
              head_dim: int, fast: bool = True) -> CpuPagedLayout:
        perm = probe_permutation(dtype, isa, num_kv_heads, block_size, head_dim)
        strides = affine_strides(perm, block_size, num_kv_heads, head_dim) if fast else None
        return cls(num_kv_heads, block_size, head_dim, dtype, isa, perm, strides)

    def _half_views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """K and V of contiguous ``rows`` ``[n, E]`` as ``[n, bs, H, D]`` strided views."""
        n, E = rows.shape[0], self.block_elems
        shape = (n, self.block_size, self.num_kv_heads, self.head_dim)
        return [rows.as_strided(shape, (E, st, sh, sd), rows.storage_offset() + off)
                for off, st, sh, sd in self.strides]

    @property
    def block_elems(self) -> int:
        return 2 * self.block_size * self.num_kv_heads * self.head_dim

    def rows(self, layer_cache: torch.Tensor) -> torch.Tensor:
        """The layer's cache as ``[num_blocks, E]`` (a view: writes land in the cache)."""
        want = (self.num_kv_heads, self.block_size, 2 * self.head_dim)
        if tuple(layer_cache.shape[1:]) != want or layer_cache.dtype != self.dtype:
            raise LayoutMismatch(
                f"cache {tuple(layer_cache.shape)} {layer_cache.dtype} is not"
                f" [num_blocks, {want[0]}, {want[1]}, {want[2]}] {self.dtype}")
        if not layer_cache.is_contiguous():
            raise LayoutMismatch("a vLLM CPU layer cache must be contiguous")
        return layer_cache.view(layer_cache.shape[0], self.block_elems)

    def gather_layer(self, layer_cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
        """Blocks ``block_ids`` of one layer as canonical ``[2, n * bs, H, D]``."""
        n, bs, H, D = block_ids.numel(), self.block_size, self.num_kv_heads, self.head_dim
        rows = self.rows(layer_cache).index_select(0, block_ids)
        if self.strides is not None:
            out = torch.empty(2, n, bs, H, D, dtype=self.dtype)
            for dst, src in zip(out, self._half_views(rows)):
                dst.copy_(src)
            return out.view(2, n * bs, H, D)
        canon = rows.index_select(1, self.perm).view(n, 2, bs, H, D)
        return canon.transpose(0, 1).reshape(2, n * bs, H, D)

    def scatter_layer(self, layer_cache: torch.Tensor, block_ids: torch.Tensor,
                      kv: torch.Tensor) -> None:
        """Write canonical ``kv`` (``[2, n * bs, H, D]``) into blocks ``block_ids`` of one layer."""
        n = block_ids.numel()
        if tuple(kv.shape) != (2, n * self.block_size, self.num_kv_heads, self.head_dim):
            raise LayoutMismatch(f"kv {tuple(kv.shape)} does not fill {n} engine blocks")
        kv = kv.to(self.dtype)
        rows = torch.empty(n, self.block_elems, dtype=self.dtype)
        if self.strides is not None:
            shape = (n, self.block_size, self.num_kv_heads, self.head_dim)
            for dst, src in zip(self._half_views(rows), kv):
                dst.copy_(src.reshape(shape))
        else:
            canon = kv.reshape(2, n, -1).transpose(0, 1).reshape(n, self.block_elems)
            rows.index_copy_(1, self.perm, canon)
        self.rows(layer_cache).index_copy_(0, block_ids, rows)


def gather_blocks(layout: CpuPagedLayout, caches: list[torch.Tensor],
                  block_ids: list[int]) -> torch.Tensor:
    """Canonical ``[L, 2, n * bs, H, D]`` of engine blocks ``block_ids`` in every layer."""
    ids = torch.as_tensor(block_ids, dtype=torch.int64)
    return torch.stack([layout.gather_layer(cache, ids) for cache in caches])


def scatter_blocks(layout: CpuPagedLayout, caches: list[torch.Tensor], block_ids: list[int],
                   kv: torch.Tensor) -> None:
    """Write canonical ``kv`` (``[L, 2, n * bs, H, D]``) into engine blocks ``block_ids``."""
    if kv.shape[0] != len(caches):
        raise LayoutMismatch(f"kv has {kv.shape[0]} layers, the engine {len(caches)}")
    ids = torch.as_tensor(block_ids, dtype=torch.int64)
    for cache, layer_kv in zip(caches, kv):
        layout.scatter_layer(cache, ids, layer_kv)
