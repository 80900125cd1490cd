"""Torch reference of pack / unpack: gather, encode; decode, scatter.

Vectorised (advanced indexing over whole engine blocks; the only Python loop
is over layers) and device-agnostic: on CPU it is the implementation, on a GPU
without CuPy it is the fallback, and everywhere it is the oracle of the CUDA
kernels.
"""

from __future__ import annotations

import torch

from kvstore.kernels.codec_ref import (
    decode_layers,
    encode_layers,
    layer_chunks,
    section_views,
    zero_gaps,
)
from kvstore.kernels.codecs import payload_spec
from kvstore.kernels.source import SKIP_BLOCK, PagedSource


def gather(src: PagedSource, l0: int = 0, l1: int | None = None) -> torch.Tensor:
    """Layers ``[l0, l1)`` of ``src``'s store blocks as ``[S, n, 2, T, H, D]``."""
    lay = src.layout
    l1 = lay.num_layers if l1 is None else l1
    S, T = src.num_store_blocks, lay.block_tokens
    out = torch.empty((S, l1 - l0, 2, T, lay.num_kv_heads, lay.head_dim),
                      dtype=lay.torch_dtype, device=src.device)
    for layer in range(l0, l1):
        for kv, view in enumerate((src.k[layer], src.v[layer])):
            rows = view.index_select(0, src.block_ids)  # [S*R, ...] contiguous: (slot, H, D)
            out[:, layer - l0, kv] = rows.view(S, T, lay.num_kv_heads, lay.head_dim)
    return out


def scatter(src: PagedSource, blocks: torch.Tensor, l0: int = 0) -> None:
    """Write ``blocks`` ``[S, n, 2, T, H, D]`` (layers ``l0..l0+n``) into the engine
    slots of ``src`` only (engine blocks with id SKIP_BLOCK are left alone)."""
    ids = src.block_ids
    keep = ids != SKIP_BLOCK
    holes = not bool(keep.all())
    if holes:
        ids = ids[keep]
    for i in range(blocks.shape[1]):
        for kv, view in enumerate((src.k[l0 + i], src.v[l0 + i])):
            rows = blocks[:, i, kv].reshape(src.block_ids.numel(), *view.shape[1:])
            view.index_copy_(0, ids, rows[keep] if holes else rows)


def pack(src: PagedSource, codec: str, out: torch.Tensor) -> None:
    """Gather and encode the store blocks of ``src`` into ``out`` ``[S, nbytes]``,
    a few layers at a time."""
    spec = payload_spec(src.layout, codec)
    zero_gaps(out, spec)
    views = section_views(out, spec)
    for l0, l1 in layer_chunks(src.num_store_blocks, src.layout):
        encode_layers(gather(src, l0, l1), views, codec, l0)


def unpack(src: PagedSource, codec: str, payloads: torch.Tensor) -> None:
    """Decode ``payloads`` ``[S, nbytes]`` and scatter them into ``src``'s slots."""
    views = section_views(payloads, payload_spec(src.layout, codec))
    for l0, l1 in layer_chunks(src.num_store_blocks, src.layout):
        scatter(src, decode_layers(views, codec, l0, l1, src.layout.torch_dtype), l0)
