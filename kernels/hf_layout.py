"""HF transformers' KV cache seen as paged K and V views.

Per layer a pair of tensors (a legacy tuple cache, or a transformers Cache)::

    K, V : [batch, H, seq, D]
            |      |  |    '- head dim, contiguous
            |      |  '------ token position
            |      '--------- kv head
            '---------------- batch row (one sequence)

A token range ``[start, start + n)`` of one batch row is seen as ``n / T``
consecutive engine "blocks" of ``T = block_tokens`` tokens (a view, no copy)::

    k_view = K[b, :, start:start+n].permute(1, 0, 2).unflatten(0, (n/T, T))
           : [n/T, T, H, D]

so HF caches go through the same gather / scatter as the paged ones, with
engine block ids ``0 .. n/T - 1``.
"""

from __future__ import annotations

import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.layout import KVLayout


def hf_views(key: torch.Tensor, value: torch.Tensor, layout: KVLayout, batch_index: int,
             start: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged views ``[num_tokens / T, T, H, D]`` of one HF layer's token range."""
    T = layout.block_tokens
    views = []
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 4 or t.shape[1] != layout.num_kv_heads or t.shape[3] != layout.head_dim:
            raise LayoutMismatch(
                f"HF {name} must be [batch, {layout.num_kv_heads}, seq, {layout.head_dim}], "
                f"got {tuple(t.shape)}")
        if t.dtype != layout.torch_dtype:
            raise LayoutMismatch(f"HF {name} dtype {t.dtype} != layout dtype {layout.dtype}")
        if t.stride(-1) != 1:
            raise LayoutMismatch(f"HF {name}: the head dim must be contiguous")
        if not 0 <= batch_index < t.shape[0]:
            raise InvalidArgument(f"batch_index {batch_index} outside [0, {t.shape[0]})")
        if start + num_tokens > t.shape[2]:
            raise InvalidArgument(
                f"tokens [{start}, {start + num_tokens}) exceed the cache's {t.shape[2]}")
        rows = t[batch_index, :, start: start + num_tokens].permute(1, 0, 2)  # [n, H, D]
        views.append(rows.unflatten(0, (num_tokens // T, T)))
    return views[0], views[1]


def hf_layers(past_key_values) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(K, V), ...]`` per layer from a legacy tuple cache or a transformers Cache.

    Accepts a sequence of ``(key, value)`` pairs, a Cache with ``.layers``
    (each with ``.keys``/``.values``, transformers >= 4.54), or one with
    ``.key_cache``/``.value_cache`` lists (older DynamicCache).
    """
    if hasattr(past_key_values, "layers"):
        return [(ly.keys, ly.values) for ly in past_key_values.layers]
    if hasattr(past_key_values, "key_cache") and hasattr(past_key_values, "value_cache"):
        return list(zip(past_key_values.key_cache, past_key_values.value_cache))
    pairs = []
    for item in past_key_values:
        if len(item) < 2:
            raise InvalidArgument("each HF layer must be a (key, value) pair")
        pairs.append((item[0], item[1]))
    return pairs
