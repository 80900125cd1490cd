"""Torch reference of pack / unpack: gather, encode; decode, scatter.

Vectorised and device-agnostic: on CPU it is the implementation, on a GPU
without CuPy it is the fallback, and everywhere it is the oracle of the CUDA
kernels. Engine blocks move per layer through :mod:`.ref_rows` (whole-block
``index_select`` / ``index_copy_``, one call per layer or per store block;
no Python loop over engine blocks or tokens); the codec math of
:mod:`.codec_ref` runs batched over all store blocks, a few layers at a time.

Passes over the data, per store block: codec ``none`` moves it once (straight
between the cache and the payload slots) where the cache rows are in canonical
order (vLLM flash), twice where a block must be reordered (vLLM CPU: rows,
then a strided copy); the quantizing codecs add a float32 head-major copy and
their arithmetic.
"""

from __future__ import annotations

import torch

from kvstore.kernels import host_paged, ref_rows
from kvstore.kernels.codec_ref import (
    decode_into,
    encode_f32,
    layer_chunks,
    section_views,
    zero_gaps,
)
from kvstore.kernels.codecs import NONE, payload_spec
from kvstore.kernels.source import PagedSource


def _block_views(src: PagedSource, rows: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Codec none: each payload row as the canonical block ``[L, 2, T, H, D]`` it
    holds, or None where a row cannot be viewed as the layout's dtype (misaligned)."""
    lay = src.layout
    try:
        return [r.view(lay.torch_dtype).view(lay.block_shape) for r in rows]
    except RuntimeError:
        return None


def pack(src: PagedSource, codec: str, rows: list[torch.Tensor],
         buf: torch.Tensor | None = None) -> None:
    """Gather and encode ``src``'s store blocks into ``rows`` (1-D uint8 payload
    slots on ``src``'s device); ``buf`` is the contiguous ``[S, nbytes]`` tensor
    the rows are, if they are one."""
    lay, S = src.layout, src.num_store_blocks
    spec = payload_spec(lay, codec)
    if codec == NONE and host_paged.gather(src, rows):  # CPU, canonical blocks: numpy
        return
    if codec == NONE:
        blocks = _block_views(src, rows)
        if blocks is not None:
            scratch = ref_rows.Scratch()
            for layer in range(lay.num_layers):
                ref_rows.gather(src, layer, ([b[layer, 0] for b in blocks],
                                             [b[layer, 1] for b in blocks]), scratch)
            return
    work = buf if buf is not None else torch.empty((S, spec.nbytes), dtype=torch.uint8,
                                                   device=src.device)
    if codec == NONE:
        pack(src, codec, list(work.unbind(0)), work)
    else:
        zero_gaps(work, spec)
        views = section_views(work, spec)
        H, T, D = lay.num_kv_heads, lay.block_tokens, lay.head_dim
        scratch = ref_rows.Scratch()
        for l0, l1 in layer_chunks(S, lay):
            # head-major private float32 copy [S, n, 2, H, T, D], filled in one pass
            x = scratch.get((S, l1 - l0, 2, H, T, D), torch.float32, src.device)
            for layer in range(l0, l1):
                ref_rows.gather(src, layer, (x[:, layer - l0, 0].transpose(1, 2),
                                             x[:, layer - l0, 1].transpose(1, 2)), scratch)
            encode_f32(x, views, codec, l0)
    if buf is None:
        for r, w in zip(rows, work.unbind(0)):
            r.copy_(w)


def unpack(src: PagedSource, codec: str, rows: list[torch.Tensor],
           buf: torch.Tensor | None = None) -> None:
    """Decode payload ``rows`` (1-D uint8 on ``src``'s device; ``buf`` the
    ``[S, nbytes]`` tensor they are, if they are one) into ``src``'s slots."""
    lay, S = src.layout, src.num_store_blocks
    if codec == NONE and host_paged.scatter(src, rows):  # CPU, canonical blocks: numpy
        return
    if codec == NONE:
        blocks = _block_views(src, rows)
        if blocks is None:
            blocks = _block_views(src, [r.clone() for r in rows])  # realigned copies
        scratch = ref_rows.Scratch()
        for layer in range(lay.num_layers):
            ref_rows.scatter(src, layer, ([b[layer, 0] for b in blocks],
                                          [b[layer, 1] for b in blocks]), scratch)
        return
    work = buf if buf is not None else torch.stack(rows)
    views = section_views(work, payload_spec(lay, codec))
    H, T, D = lay.num_kv_heads, lay.block_tokens, lay.head_dim
    scratch = ref_rows.Scratch()
    for l0, l1 in layer_chunks(S, lay):
        # layer-major, so each (layer, K/V) is a contiguous [S, T, H, D]
        out = scratch.get((l1 - l0, 2, S, T, H, D), lay.torch_dtype, src.device)
        decode_into(views, codec, l0, l1, out.permute(2, 0, 1, 3, 4, 5))
        for layer in range(l0, l1):
            ref_rows.scatter(src, layer, (out[layer - l0, 0], out[layer - l0, 1]), scratch)
