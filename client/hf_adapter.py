"""HF transformers adapter: store and restore a ``DynamicCache`` prefix.

transformers keeps, per layer, keys and values of shape ``[batch, H, seq, D]``
(``cache.layers[i].keys`` / ``.values``). The store's canonical tensor is
``[L, 2, T, H, D]``. For batch row ``b``::

    canonical[l, 0, t, h, :] == cache.layers[l].keys[b, h, t, :]
    canonical[l, 1, t, h, :] == cache.layers[l].values[b, h, t, :]

``HFPrefixCache`` wraps a client namespace (``lookup``/``put``/``get`` of
DESIGN.md): ``store`` saves the whole blocks of a computed prompt, and
``restore`` returns the longest cached prefix as a ``DynamicCache`` so that
``model(suffix_ids, past_key_values=cache)`` continues the prompt. The
restore decodes the store's payloads straight into the cache's tensors
(``kvstore.client.hf_reserved.KVBuffer``): one copy, no canonical tensor in
between.

On a GPU model (the cache's tensors, or the ``KVBuffer``, on a CUDA device)
the same calls go through the kernels (``pack_hf`` / ``unpack_hf``, the CUDA
ones on a GPU) and ``kvstore.client.transfer``: ``store`` packs the blocks on
the device and copies each payload once into its arena slot (pinned: DMA),
committing once the copy completed; ``restore`` copies each cached payload
once from the arena to the device and unpacks it into the buffer, releasing
the lease once copied. Passing ``timeline`` (a ``HostTimeline`` with device
memory) runs that path on CPU tensors, which is how it is tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.layout import KVLayout

if TYPE_CHECKING:
    from kvstore.client.hf_reserved import KVBuffer


def layout_for_model(config, model_id: str, block_tokens: int = 256, dtype=None) -> KVLayout:
    """The KVLayout of a transformers decoder config (Llama-style attention)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype = dtype or getattr(text, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return KVLayout(
        model_id=model_id,
        num_layers=text.num_hidden_layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=str(dtype).removeprefix("torch."),
        block_tokens=block_tokens,
    )


def cache_to_canonical(cache, num_tokens: int | None = None, batch_index: int = 0) -> torch.Tensor:
    """The first ``num_tokens`` tokens of batch row ``batch_index`` as ``[L, 2, T, H, D]``."""
    layers = cache.layers
    if not layers:
        raise InvalidArgument("empty cache")
    seq = layers[0].keys.shape[2]
    num_tokens = seq if num_tokens is None else num_tokens
    if num_tokens > seq:
        raise InvalidArgument(f"cache holds {seq} tokens, asked for {num_tokens}")
    keys = torch.stack([layer.keys[batch_index, :, :num_tokens] for layer in layers])
    values = torch.stack([layer.values[batch_index, :, :num_tokens] for layer in layers])
    # [L, H, T, D] x2 -> [L, 2, T, H, D]
    return torch.stack([keys, values], dim=1).transpose(2, 3).contiguous()


def canonical_to_cache(kv: torch.Tensor, config=None):
    """A batch-1 ``DynamicCache`` holding canonical ``kv`` (``[L, 2, T, H, D]``)."""
    from transformers import DynamicCache

    if kv.dim() != 5 or kv.shape[1] != 2:
        raise InvalidArgument(f"expected [L, 2, T, H, D], got {tuple(kv.shape)}")
    per_layer = kv.transpose(2, 3)  # [L, 2, H, T, D]
    data = [(per_layer[i, 0].unsqueeze(0).contiguous(), per_layer[i, 1].unsqueeze(0).contiguous())
            for i in range(kv.shape[0])]
    return DynamicCache(ddp_cache_data=data, config=config)


class HFPrefixCache:
    """Store/restore transformers KV caches of prompts through a kvstore namespace."""

    def __init__(self, namespace, layout: KVLayout, config=None, timeline=None):
        self.ns = namespace
        self.layout = layout
        self.config = config
        self.timeline = timeline  # None: the kernels' path for device tensors only

    def _device_path(self, tensor: torch.Tensor):
        """The timeline of the kernels' path for ``tensor``'s device, or None (CPU path)."""
        if self.timeline is not None:
            return self.timeline
        if tensor.device.type == "cpu":
            return None
        from kvstore.client.transfer import timeline_of

        return timeline_of([tensor], None)

    def _check(self, cache) -> None:
        first = cache.layers[0].keys
        got = (len(cache.layers), first.shape[1], first.shape[3])
        want = (self.layout.num_layers, self.layout.num_kv_heads, self.layout.head_dim)
        if got != want:
            raise LayoutMismatch(f"cache geometry (layers, heads, dim) {got} != layout {want}")
        if first.dtype != self.layout.torch_dtype:
            raise LayoutMismatch(f"cache dtype {first.dtype} != layout {self.layout.dtype}")

    def store(self, tokens, cache, buffer: KVBuffer | None = None) -> int:
        """Store the whole blocks of ``tokens`` whose KV ``cache`` holds; returns tokens stored.

        When ``cache`` lives in ``buffer`` the blocks are encoded straight from
        a strided canonical view of it (no stacked copy of the cache first).
        """
        self._check(cache)
        n = (min(len(tokens), cache.get_seq_length()) // self.layout.block_tokens) * self.layout.block_tokens
        if n == 0:
            return 0
        tl = self._device_path(cache.layers[0].keys)
        if tl is not None:
            return self._store_device(tokens, cache, n, tl)
        if buffer is not None and buffer.holds(cache):
            kv = buffer.canonical(n)
        else:
            kv = cache_to_canonical(cache, n)
        return self.ns.put(tokens[:n], kv)

    def restore(self, tokens, max_tokens: int | None = None, buffer: KVBuffer | None = None,
                spare: int = 0):
        """``(n, DynamicCache)`` for the longest cached prefix of ``tokens``; ``(0, None)`` on a miss.

        ``n`` is kept below ``len(tokens)`` so the model has at least one new
        token to run (it needs one to produce the next-token logits). The
        blocks are decoded straight from the store's payloads into the cache's
        per-layer tensors: ``buffer`` (an engine's ``KVBuffer``, reused between
        requests) or a fresh one, with room for ``spare`` more tokens so that
        the forward of the suffix appends in place instead of concatenating.
        """
        limit = len(tokens) - 1 if max_tokens is None else min(max_tokens, len(tokens) - 1)
        limit = (limit // self.layout.block_tokens) * self.layout.block_tokens
        if limit <= 0:
            return 0, None
        if buffer is None:
            from kvstore.client.hf_reserved import KVBuffer

            buffer = KVBuffer(self.layout)
        buffer.reserve(limit + spare)
        tl = self._device_path(buffer.tensor)
        if tl is not None:
            n = self._restore_device(tokens, limit, buffer, tl)
            return (n, buffer.cache(n)) if n else (0, None)
        codec, bt = self.ns.codec, self.layout.block_tokens

        def consume(payloads) -> None:
            codec.decode_heads_into(payloads, buffer.tokens(len(payloads) * bt))

        n = self.ns.read_blocks(tokens[:limit], consume)
        if n == 0:
            return 0, None
        return n, buffer.cache(n)

    # -- the kernels' path (a GPU model; CPU tensors with a test timeline) ------------
    def _store_device(self, tokens, cache, n: int, tl) -> int:
        from kvstore.client.row_transfers import save_rows
        from kvstore.kernels import pack_hf
        from kvstore.tokens import as_tokens

        lay, codec, T = self.layout, self.ns.codec.codec, self.layout.block_tokens

        def pack(out, first: int, count: int) -> None:
            pack_hf(cache, lay, codec, start=first * T, num_tokens=count * T, out=out)

        ns = self.ns
        return ns.availability.call(
            lambda: save_rows(ns, as_tokens(tokens)[:n], b"", n // T, pack, tl), 0)

    def _restore_device(self, tokens, limit: int, buffer: KVBuffer, tl) -> int:
        from kvstore.client.row_transfers import load_rows
        from kvstore.kernels import unpack_hf
        from kvstore.tokens import as_tokens

        lay, codec, T = self.layout, self.ns.codec.codec, self.layout.block_tokens
        t = buffer.tensor
        pairs = [(t[i, 0], t[i, 1]) for i in range(lay.num_layers)]  # [1, H, capacity, D]

        def unpack(rows, first: int, count: int) -> None:
            unpack_hf(rows, pairs, lay, codec, start=first * T)

        ns = self.ns
        return ns.availability.call(
            lambda: load_rows(ns, as_tokens(tokens)[:limit], b"", limit // T, unpack, tl), 0)
