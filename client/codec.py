"""BlockCodec: one stored block <-> its payload bytes (the seam for the kernels' codecs).

Codec ``none`` is built in: a block's payload is
``kv[:, :, i*B:(i+1)*B].contiguous()``'s bytes (layout ``[L, 2, B, H, D]``,
the layout's dtype). Every other codec comes from
``kvstore.kernels.encode / decode / payload_nbytes``;
this adapter is the only place the client touches them.
"""

from __future__ import annotations

import warnings

import torch

from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout


def _kernels():
    try:
        from kvstore.kernels import decode, encode, payload_nbytes
    except ImportError as exc:
        raise InvalidArgument("this codec needs kvstore.kernels (encode/decode/payload_nbytes)") from exc
    return encode, decode, payload_nbytes


def _as_uint8(buf) -> torch.Tensor:
    """A uint8 tensor over ``buf`` without copying (read-only buffers are never written)."""
    view = memoryview(buf)
    if view.readonly:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(view, dtype=torch.uint8)
    return torch.frombuffer(view, dtype=torch.uint8)


class BlockCodec:
    def __init__(self, layout: KVLayout, codec: str = "none"):
        self.layout, self.codec = layout, codec
        self.dtype = layout.torch_dtype
        self.block_shape = layout.block_shape
        if codec == "none":
            self.payload_nbytes = layout.block_nbytes
            self._encode = self._decode = None
        else:
            self._encode, self._decode, nbytes = _kernels()
            self.payload_nbytes = int(nbytes(layout, codec))

    def encode(self, block: torch.Tensor):
        """Payload of one block ``[L, 2, B, H, D]`` as a flat bytes-like (numpy uint8)."""
        if self._encode is None:
            flat = block.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        else:
            flat = self._encode(block, self.codec).detach().cpu().reshape(-1)
        return flat.numpy()

    def encode_into(self, block: torch.Tensor, out) -> None:
        """Write one block's payload into the writable buffer ``out`` (an arena slot)."""
        dst = _as_uint8(out)
        if self._encode is None:  # one strided copy straight into the arena
            dst.view(self.dtype).view(self.block_shape).copy_(block)
        else:
            dst.copy_(self._encode(block, self.codec).reshape(-1))

    def decode_into(self, payload, out: torch.Tensor) -> None:
        """Decode one payload into ``out`` (a ``[L, 2, B, H, D]`` view of the result)."""
        src = _as_uint8(payload)
        if self._decode is None:
            out.copy_(src.view(self.dtype).view(self.block_shape))
        else:
            out.copy_(self._decode(src, self.layout, self.codec))
