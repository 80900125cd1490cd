"""BlockCodec: one stored block <-> its payload bytes (the seam for the kernels' codecs).

Codec ``none`` is built in: a block's payload is
``kv[:, :, i*B:(i+1)*B].contiguous()``'s bytes (layout ``[L, 2, B, H, D]``,
the layout's dtype). Every other codec comes from
``kvstore.kernels.encode / decode / payload_nbytes``;
this adapter is the only place the client touches them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from kvstore.errors import InvalidArgument
from kvstore.kernels import decode, encode, host_copy, payload_nbytes
from kvstore.kernels.host_copy import host_bits, move
from kvstore.layout import KVLayout
from kvstore.transport.payloads import Gathered


def _as_uint8(buf) -> torch.Tensor:
    """A uint8 tensor over ``buf`` without copying (read-only buffers are never written)."""
    view = memoryview(buf)
    if view.readonly:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(view, dtype=torch.uint8)
    return torch.frombuffer(view, dtype=torch.uint8)


def _payload_array(buf, like: np.ndarray, shape) -> np.ndarray:
    """``buf`` (bytes-like) as an array of ``like``'s dtype and ``shape`` (no copy)."""
    return np.frombuffer(buf, dtype=np.uint8).view(like.dtype).reshape(shape)


def transposed_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` on the CPU in one thread: the store's every CPU copy of a block
    (``kvstore.kernels.host_copy``: numpy's copy of the raw bits, whatever torch's
    thread count). Other devices use torch."""
    host_copy.copy(dst, src)


class BlockCodec:
    def __init__(self, layout: KVLayout, codec: str = "none"):
        self.layout, self.codec = layout, codec
        self.dtype = layout.torch_dtype
        self.block_shape = layout.block_shape
        if codec == "none":
            self.payload_nbytes = layout.block_nbytes
            self._encode = self._decode = None
        else:
            self._encode, self._decode = encode, decode
            self.payload_nbytes = int(payload_nbytes(layout, codec))

    def encode(self, block: torch.Tensor):
        """Payload of one block ``[L, 2, B, H, D]`` as a flat bytes-like (numpy uint8)."""
        if self._encode is None:
            out = np.empty(self.payload_nbytes, dtype=np.uint8)
            self.encode_into(block.detach(), out)
            return out
        return self._encode(block, self.codec).detach().cpu().reshape(-1).numpy()

    def encode_into(self, block: torch.Tensor, out) -> None:
        """Write one block's payload into the writable buffer ``out`` (an arena slot)."""
        dst = _as_uint8(out)
        if self._encode is None:  # one strided copy straight into the arena
            transposed_copy(dst.view(self.dtype).view(self.block_shape), block)
        else:
            transposed_copy(dst, self._encode(block, self.codec).reshape(-1))

    def encoder(self, kv: torch.Tensor) -> Callable[[int, object], None]:
        """``enc(i, out)``: ``encode_into`` of block ``i`` of ``kv`` ``[L, 2, T, H, D]``.

        Codec ``none`` from a CPU tensor: ``kv`` is seen through numpy once per
        call, and each block is one numpy copy straight into ``out`` (no torch
        wrapper per block, no torch thread pool).
        """
        B, arr = self.layout.block_tokens, (host_bits(kv) if self._encode is None else None)
        if arr is None:
            return lambda i, out: self.encode_into(kv[:, :, i * B : (i + 1) * B], out)
        shape = self.block_shape
        return lambda i, out: move(_payload_array(out, arr, shape), arr[:, :, i * B : (i + 1) * B])

    def gathered(self, kv: torch.Tensor, n: int) -> list[Gathered] | None:
        """Blocks ``0..n-1`` of ``kv`` ``[L, 2, T, H, D]`` as ``Gathered`` segments of its own
        memory (codec ``none``: each block is its ``2 L`` slices, ``transport.payloads``),
        or None when they cannot be (another codec or device, a strided ``T, H, D``)."""
        arr = host_bits(kv) if self._encode is None else None
        if arr is None or arr.ndim != 5:
            return None
        item = arr.itemsize
        _, _, _, heads, dim = arr.shape
        if arr.strides[2:] != (heads * dim * item, dim * item, item):
            return None  # a block's slice of one layer's K or V is not one run of memory
        B, L = self.layout.block_tokens, arr.shape[0]
        return [Gathered.of(arr[layer, kv_, i * B : (i + 1) * B]
                            for layer in range(L) for kv_ in range(2)) for i in range(n)]

    def decoder(self, out: torch.Tensor) -> Callable[[int, object], None]:
        """``dec(i, payload)``: ``decode_into`` of ``payload`` as block ``i`` of ``out``
        ``[L, 2, T, H, D]`` (codec ``none`` into a CPU tensor: one numpy copy)."""
        B, arr = self.layout.block_tokens, (host_bits(out) if self._decode is None else None)
        if arr is None:
            return lambda i, payload: self.decode_into(payload, out[:, :, i * B : (i + 1) * B])
        shape = self.block_shape
        return lambda i, payload: move(arr[:, :, i * B : (i + 1) * B],
                                       _payload_array(payload, arr, shape))

    def decode_heads_into(self, payloads, out: torch.Tensor) -> None:
        """Decode consecutive blocks into ``out`` ``[L, 2, H, len(payloads) * B, D]``.

        Head-major, the order of a transformers cache (``[batch, H, seq, D]``
        per layer): each block is transposed while it is copied, so ``out``
        may be a strided view of the engine's own KV buffer and nothing is
        staged in between for codec ``none``. Quantized codecs decode each
        block into one reused scratch block first.
        """
        B = self.layout.block_tokens
        blocks = list(payloads)
        if out.shape[3] != len(blocks) * B:
            raise InvalidArgument(f"out holds {out.shape[3]} tokens, payloads {len(blocks) * B}")
        scratch = self.scratch()
        for i, src in enumerate(blocks):
            block = self.block_view(src, scratch)
            transposed_copy(out[:, :, :, i * B : (i + 1) * B], block.transpose(2, 3))

    def scratch(self) -> torch.Tensor | None:
        """A block to decode into, for ``block_view``; None for codec ``none`` (no decode)."""
        return None if self._decode is None else torch.empty(self.block_shape, dtype=self.dtype)

    def block_view(self, payload, scratch: torch.Tensor | None) -> torch.Tensor:
        """One payload as a canonical block ``[L, 2, B, H, D]``, valid while ``payload`` is.

        Codec ``none``: a view of the payload's own bytes (no copy). Others:
        decoded into ``scratch`` (from ``scratch()``), which is returned.
        """
        src = _as_uint8(payload)
        if self._decode is None:
            return src.view(self.dtype).view(self.block_shape)
        return self._decode(src, self.layout, self.codec, out=scratch)

    def decode_into(self, payload, out: torch.Tensor) -> None:
        """Decode one payload into ``out`` (a ``[L, 2, B, H, D]`` view of the result)."""
        src = _as_uint8(payload)
        if self._decode is None:
            transposed_copy(out, src.view(self.dtype).view(self.block_shape))
        else:
            transposed_copy(out, self._decode(src, self.layout, self.codec))
