"""Where the store blocks of one call live in an engine cache, validated.

Every pack / unpack call is reduced to a :class:`PagedSource`: per layer a K
and a V view whose dim 0 is the engine block and whose other dims enumerate
(slot, head, dim) in row-major order (``[num_blocks, ebs, H, D]``, or tiled;
see :mod:`kvstore.kernels.layouts`) and the engine block ids, ``T / ebs`` of
them per store block, in token order. In an unpack, id ``SKIP_BLOCK`` (-1)
marks an engine block to leave alone (its tokens are in the engine already,
e.g. in its own prefix cache). The same source also describes a canonical
block (one engine block of T tokens, id 0), so ``encode``/``decode`` run
through the same kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.layout import DTYPE_SIZES, KVLayout

SKIP_BLOCK = -1  # an unpack's block id for "do not write this engine block"


@dataclass(frozen=True)
class PagedSource:
    """K/V views of every layer plus the engine block ids of S store blocks."""

    layout: KVLayout
    k: tuple[torch.Tensor, ...]  # per layer [num_blocks, ebs, H, D], or tiled
    v: tuple[torch.Tensor, ...]
    block_ids: torch.Tensor  # int64 [S * T/ebs], on the cache's device; unpacks may hold -1
    ebs: int

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @property
    def num_store_blocks(self) -> int:
        return self.block_ids.numel() * self.ebs // self.layout.block_tokens

    @property
    def plain(self) -> bool:
        """Every view is ``[num_blocks, ebs, H, D]`` with a contiguous head dim (what
        the CUDA kernels take); False for tiled or D-strided (vLLM CPU) views."""
        want = (self.num_blocks, self.ebs, self.layout.num_kv_heads, self.layout.head_dim)
        return all(tuple(t.shape) == want and t.stride(-1) == 1 for t in (*self.k, *self.v))


def layout_of_block(block: torch.Tensor) -> KVLayout:
    """The layout a canonical block ``[L, 2, T, H, D]`` implies (model id is moot)."""
    if not isinstance(block, torch.Tensor):
        raise InvalidArgument(f"block must be a torch.Tensor, got {type(block).__name__}")
    dtype = str(block.dtype).removeprefix("torch.")
    if dtype not in DTYPE_SIZES:
        raise InvalidArgument(f"block dtype must be one of {sorted(DTYPE_SIZES)}, got {dtype}")
    if block.dim() != 5 or block.shape[1] != 2 or 0 in block.shape:
        raise InvalidArgument(f"block must be [L, 2, T, H, D], got {tuple(block.shape)}")
    L, _, T, H, D = block.shape
    return KVLayout("block", L, H, D, dtype, T)


def block_source(block: torch.Tensor, layout: KVLayout) -> PagedSource:
    """A canonical block seen as a paged cache of one engine block per layer."""
    if tuple(block.shape) != layout.block_shape or block.dtype != layout.torch_dtype:
        raise LayoutMismatch(
            f"block must be {layout.block_shape} {layout.dtype}, "
            f"got {tuple(block.shape)} {block.dtype}")
    if block.stride(-1) != 1:
        block = block.contiguous()
    k = tuple(block[i, 0].unsqueeze(0) for i in range(layout.num_layers))
    v = tuple(block[i, 1].unsqueeze(0) for i in range(layout.num_layers))
    ids = torch.zeros(1, dtype=torch.int64, device=block.device)
    return PagedSource(layout, k, v, ids, layout.block_tokens)


def as_block_ids(block_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``block_ids`` as a 1-D int64 tensor (on the CPU unless it already is a tensor)."""
    if isinstance(block_ids, torch.Tensor):
        if block_ids.dim() != 1 or block_ids.dtype.is_floating_point or block_ids.is_complex() \
                or block_ids.dtype == torch.bool:
            raise InvalidArgument("block_ids must be a 1-D integer tensor")
        return block_ids.to(torch.int64)
    arr = np.asarray(block_ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidArgument("block_ids must be a flat sequence of integers")
    return torch.from_numpy(arr.astype(np.int64))


def _repeats(ids: torch.Tensor) -> bool:
    """Whether an id occurs twice (numpy's sort on the CPU: torch.unique costs ~0.1 ms
    a call, per layer of every paged load)."""
    if ids.device.type == "cpu":
        s = np.sort(ids.numpy())
        return bool((s[1:] == s[:-1]).any())
    return torch.unique(ids).numel() != ids.numel()


def paged_source(k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], block_ids,
                 layout: KVLayout, ebs: int, *, writing: bool,
                 check_ids: bool = True) -> PagedSource:
    """Validate per-layer views and block ids; ``writing`` also forbids duplicate ids
    and allows ``SKIP_BLOCK`` (-1) for engine blocks to leave alone.

    Checking ids that live on a GPU costs one synchronisation; ``check_ids=False``
    is for ids this package made itself.
    """
    T = layout.block_tokens
    if T % ebs:
        raise InvalidArgument(
            f"store block_tokens {T} must be a multiple of the engine block size {ebs}")
    if len(k) != layout.num_layers or len(v) != layout.num_layers:
        raise LayoutMismatch(f"expected {layout.num_layers} layers, got {len(k)}")
    device = k[0].device
    shape0 = tuple(k[0].shape)
    per_block = ebs * layout.num_kv_heads * layout.head_dim
    for views in (k, v):  # K and V views may differ (tiled), all layers may not
        first = tuple(views[0].shape)
        for t in views:
            if t.device != device:
                raise InvalidArgument("all layers must be on one device")
            if tuple(t.shape) != first:
                raise LayoutMismatch(f"all layers must have one shape, got {tuple(t.shape)} "
                                     f"and {first}")
        if first[0] != shape0[0] or math.prod(first[1:]) != per_block:
            raise LayoutMismatch(f"a view {first} does not hold {shape0[0]} engine blocks of "
                                 f"{ebs} x {layout.num_kv_heads} x {layout.head_dim} values")
    ids = as_block_ids(block_ids)
    R = T // ebs
    if ids.numel() % R:
        raise InvalidArgument(
            f"{ids.numel()} engine block ids do not make whole store blocks of {R} ids")
    if check_ids and ids.numel():
        lo, hi = torch.aminmax(ids)
        lo, hi = int(lo), int(hi)  # a sync only when the caller's ids live on a GPU
        least = SKIP_BLOCK if writing else 0
        if lo < least or hi >= shape0[0]:
            skip = " (or -1: leave the block alone)" if writing else ""
            raise InvalidArgument(
                f"block ids must lie in [0, {shape0[0]}){skip}, got [{lo}, {hi}]")
        if writing and _repeats(ids[ids != SKIP_BLOCK] if lo == SKIP_BLOCK else ids):
            raise InvalidArgument("block ids of an unpack must not repeat")
    if ids.device != device:
        if ids.device.type == "cpu" and device.type == "cuda":
            ids = ids.pin_memory().to(device, non_blocking=True)
        else:
            ids = ids.to(device)
    return PagedSource(layout, tuple(k), tuple(v), ids.contiguous(), ebs)
