"""Block codec entry points: ``encode`` a canonical block, ``decode`` a payload."""

from __future__ import annotations

import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels import dispatch
from kvstore.kernels.codecs import check_codec, payload_nbytes
from kvstore.kernels.source import block_source, layout_of_block
from kvstore.layout import KVLayout


def encode(block: torch.Tensor, codec: str, *, backend: str | None = None) -> torch.Tensor:
    """Encode a canonical block ``[L, 2, T, H, D]`` into a 1-D ``torch.uint8`` payload.

    The payload lies on the block's device and has exactly
    ``payload_nbytes(layout, codec)`` bytes (layouts in :mod:`.codecs`).
    """
    check_codec(codec)
    layout = layout_of_block(block)
    return dispatch.pack(block_source(block, layout), codec, None, backend)[0]


def decode(payload: torch.Tensor, layout: KVLayout, codec: str, *,
           out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Decode ``payload`` into a block ``layout.block_shape`` of ``layout``'s dtype.

    The block is made on the payload's device, or written into ``out`` (a
    contiguous tensor of that shape and dtype, on any device).
    """
    check_codec(codec)
    if not isinstance(layout, KVLayout):
        raise InvalidArgument(f"layout must be a KVLayout, got {type(layout).__name__}")
    nbytes = payload_nbytes(layout, codec)
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
        raise InvalidArgument("payload must be a 1-D torch.uint8 tensor")
    if payload.numel() != nbytes:
        raise InvalidArgument(
            f"payload has {payload.numel()} bytes; {codec} blocks of this layout have {nbytes}")
    if out is None:
        out = torch.empty(layout.block_shape, dtype=layout.torch_dtype, device=payload.device)
    elif tuple(out.shape) != layout.block_shape or out.dtype != layout.torch_dtype \
            or not out.is_contiguous():
        raise LayoutMismatch(f"out must be a contiguous {layout.block_shape} {layout.dtype} tensor")
    dispatch.unpack(block_source(out, layout), codec, [payload], backend)
    return out
