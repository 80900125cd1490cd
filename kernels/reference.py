"""Torch reference of pack / unpack: gather, encode; decode, scatter.

Vectorised (advanced indexing over whole engine blocks; the only Python loop
is over layers) and device-agnostic: on CPU it is the implementation, on a GPU
without CuPy it is the fallback, and everywhere it is the oracle of the CUDA
kernels.
"""

from __future__ import annotations

import torch
from kvstore.kernels.codec_ref import decode_blocks, encode_blocks
from kvstore.kernels.source import PagedSource


def gather(src: PagedSource) -> torch.Tensor:
    """The store blocks of ``src`` as canonical tensors ``[S, L, 2, T, H, D]``."""
    lay = src.layout
    S, T = src.num_store_blocks, lay.block_tokens
    out = torch.empty((S, lay.num_layers, 2, T, lay.num_kv_heads, lay.head_dim),
                      dtype=lay.torch_dtype, device=src.device)
    for layer in range(lay.num_layers):
        for kv, view in enumerate((src.k[layer], src.v[layer])):
            rows = view.index_select(0, src.block_ids)  # [S*R, ebs, H, D]
            out[:, layer, kv] = rows.reshape(S, T, lay.num_kv_heads, lay.head_dim)
    return out


def scatter(src: PagedSource, blocks: torch.Tensor) -> None:
    """Write ``blocks`` ``[S, L, 2, T, H, D]`` into the engine slots of ``src`` only."""
    lay = src.layout
    rows_shape = (src.block_ids.numel(), src.ebs, lay.num_kv_heads, lay.head_dim)
    for layer in range(lay.num_layers):
        for kv, view in enumerate((src.k[layer], src.v[layer])):
            rows = blocks[:, layer, kv].reshape(rows_shape)
            view.index_copy_(0, src.block_ids, rows)


def pack(src: PagedSource, codec: str, out: torch.Tensor) -> None:
    """Gather and encode the store blocks of ``src`` into ``out`` ``[S, nbytes]``."""
    encode_blocks(gather(src), src.layout, codec, out=out)


def unpack(src: PagedSource, codec: str, payloads: torch.Tensor) -> None:
    """Decode ``payloads`` ``[S, nbytes]`` and scatter them into ``src``'s slots."""
    scatter(src, decode_blocks(payloads, src.layout, codec))
