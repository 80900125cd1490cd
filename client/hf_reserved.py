"""A transformers ``DynamicCache`` whose layers live in one preallocated buffer.

transformers' ``DynamicLayer`` grows by ``torch.cat``: every forward copies the
whole cache of every layer to append the new tokens. For a request that
restores a 4k-token prefix and then runs a one-token suffix, that copy is as
large as the restore itself, and a fresh allocation of that size costs page
faults on top (tens of ms per 64 MiB on a VM). An engine keeps its KV memory
allocated between requests instead; ``KVBuffer`` is that memory here:

    buffer[L, 2, 1, H, capacity, D]        (layer, key/value, batch, head, token, dim)

``ReservedLayer`` presents ``buffer[l, 0|1, :, :, :n]`` as the layer's
``keys``/``values`` (the ``[batch, H, seq, D]`` view transformers expects)
and ``update`` writes new tokens in place behind them. A restore decodes the
store's blocks straight into the buffer (``kvstore.client.hf_adapter``), so
the cached prefix is copied exactly once, from the store into the cache the
model reads.

Anything that replaces a layer's tensors (``crop``, beam reordering) or a
request longer than the capacity falls back to ``DynamicLayer``'s
concatenation, so the cache stays correct, only slower.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` over ``keys_buf``/``values_buf`` ``[1, H, capacity, D]``."""

    def __init__(self, keys_buf: torch.Tensor, values_buf: torch.Tensor, length: int = 0):
        super().__init__()
        self._kbuf, self._vbuf = keys_buf, values_buf
        self.dtype, self.device = keys_buf.dtype, keys_buf.device
        self.is_initialized = True
        self._set_length(length)

    @property
    def capacity(self) -> int:
        return self._kbuf.shape[2]

    def _set_length(self, n: int) -> None:
        self.keys = self._kbuf[:, :, :n]
        self.values = self._vbuf[:, :, :n]
        self._views = (self.keys, self.values)

    def _in_buffer(self) -> bool:
        """True while ``keys``/``values`` are still the views this layer set (nobody replaced them)."""
        return self.keys is self._views[0] and self.values is self._views[1]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, new = self.keys.shape[2], key_states.shape[2]
        if (not self._in_buffer() or n + new > self.capacity
                or key_states.shape[0] != self._kbuf.shape[0]):
            return super().update(key_states, value_states, *args, **kwargs)
        self._kbuf[:, :, n : n + new].copy_(key_states)
        self._vbuf[:, :, n : n + new].copy_(value_states)
        self._set_length(n + new)
        return self.keys, self.values


class KVBuffer:
    """An engine's KV memory for one batch-1 request, kept between requests.

    ``cache(length)`` hands out a ``DynamicCache`` over the buffer whose first
    ``length`` tokens are taken as filled; the previous cache it handed out
    must no longer be in use (one request at a time). ``tokens(n)`` is the
    ``[L, 2, H, n, D]`` view that a restore writes the prefix into.
    """

    def __init__(self, layout: KVLayout, capacity: int = 0, device=None):
        self.layout = layout
        self.device = torch.device(device or "cpu")
        self.tensor = torch.empty(0)
        self.reserve(capacity)

    @property
    def capacity(self) -> int:
        return self.tensor.shape[4] if self.tensor.dim() == 6 else 0

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` tokens.

        Grows in whole store blocks and by at least a half, never shrinks: a
        prompt a few tokens longer than the last one must not cost a fresh
        allocation (whose pages fault in again).
        """
        if capacity <= self.capacity:
            return
        bt = self.layout.block_tokens
        capacity = max(-(-capacity // bt) * bt, self.capacity * 3 // 2)
        lay = self.layout
        self.tensor = torch.empty((lay.num_layers, 2, 1, lay.num_kv_heads, capacity, lay.head_dim),
                                  dtype=lay.torch_dtype, device=self.device)

    def tokens(self, n: int) -> torch.Tensor:
        """The first ``n`` token positions of every layer, ``[L, 2, H, n, D]`` (a view)."""
        if n > self.capacity:
            raise InvalidArgument(f"buffer holds {self.capacity} tokens, asked for {n}")
        return self.tensor[:, :, 0, :, :n]

    def canonical(self, n: int) -> torch.Tensor:
        """The first ``n`` tokens as a canonical ``[L, 2, n, H, D]`` view (strided, no copy)."""
        return self.tokens(n).transpose(2, 3)

    def holds(self, cache) -> bool:
        """True if every layer of ``cache`` still reads its tokens from this buffer."""
        t = self.tensor
        layers = getattr(cache, "layers", ())
        return len(layers) == self.layout.num_layers and t.dim() == 6 and all(
            isinstance(layer, ReservedLayer) and layer._kbuf.data_ptr() == t[i, 0].data_ptr()
            and layer._vbuf.data_ptr() == t[i, 1].data_ptr() and layer._in_buffer()
            for i, layer in enumerate(layers))

    def cache(self, length: int = 0, capacity: int | None = None) -> DynamicCache:
        """A cache over the buffer, ``length`` tokens filled, room for ``capacity`` in all."""
        if capacity is not None:
            self.reserve(capacity)
        if length > self.capacity:
            raise InvalidArgument(f"buffer holds {self.capacity} tokens, asked for {length}")
        t = self.tensor
        layers = [ReservedLayer(t[i, 0], t[i, 1], length) for i in range(self.layout.num_layers)]
        cache = DynamicCache()
        cache.layers = layers
        return cache
