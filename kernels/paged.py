"""Pack / unpack between engine KV caches and store blocks, fused with a codec.

``pack_*`` gathers the tokens of whole store blocks out of an engine cache and
encodes each block into one payload; ``unpack_*`` decodes payloads and writes
their tokens into the named engine slots, touching nothing else of the cache.
Engine layouts and their diagrams: :mod:`kvstore.kernels.layouts`.

Paged caches (vLLM): store block ``i`` is made of engine blocks
``block_ids[i*R:(i+1)*R]`` in token order, ``R = block_tokens / engine
block_size`` (16 vs 256 gives R = 16); ``block_tokens`` must be a multiple of
the engine block size. In ``unpack_paged``, an id of ``SKIP_BLOCK`` (-1)
leaves that engine block alone (the engine holds its tokens already, e.g. in
its prefix cache, and a lossy codec must not overwrite them). HF caches: a
token range ``[start, start + S*T)`` of one batch row.

Payloads written into pinned host ``out`` slots from a CUDA cache are copied
asynchronously on the current stream (as torch's ``non_blocking`` copies):
synchronise before reading them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels import dispatch
from kvstore.kernels.codecs import check_codec
from kvstore.kernels.hf_layout import hf_layers, hf_views
from kvstore.kernels.layouts import EngineLayout
from kvstore.kernels.source import PagedSource, paged_source
from kvstore.layout import KVLayout

BlockIds = Sequence[int] | torch.Tensor


def _paged(kv_caches: Sequence[torch.Tensor], block_ids: BlockIds, layout: KVLayout,
           engine: EngineLayout, writing: bool) -> PagedSource:
    if not isinstance(engine, EngineLayout):
        raise InvalidArgument(f"engine must be an EngineLayout, got {type(engine).__name__}")
    if not isinstance(layout, KVLayout):
        raise InvalidArgument(f"layout must be a KVLayout, got {type(layout).__name__}")
    caches = list(kv_caches)
    if len(caches) != layout.num_layers:
        raise LayoutMismatch(f"expected {layout.num_layers} layer caches, got {len(caches)}")
    if not all(isinstance(c, torch.Tensor) for c in caches):
        raise InvalidArgument("kv_caches must be torch tensors, one per layer")
    views = [engine.kv_views(c, layout) for c in caches]
    return paged_source([k for k, _ in views], [v for _, v in views], block_ids, layout,
                        engine.block_size, writing=writing)


def pack_paged(kv_caches: Sequence[torch.Tensor], block_ids: BlockIds, layout: KVLayout,
               codec: str, engine: EngineLayout, *, out=None,
               backend: str | None = None) -> list[torch.Tensor]:
    """Gather + encode: one ``uint8`` payload per store block of ``block_ids``.

    ``kv_caches``: one tensor per layer in ``engine``'s layout. ``out``: where
    to write (a ``[S, nbytes]`` tensor or S 1-D slots); by default a fresh
    buffer on the cache's device, whose rows are returned.
    """
    check_codec(codec)
    src = _paged(kv_caches, block_ids, layout, engine, writing=False)
    return dispatch.pack(src, codec, out, backend)


def unpack_paged(payloads, kv_caches: Sequence[torch.Tensor], block_ids: BlockIds,
                 layout: KVLayout, codec: str, engine: EngineLayout, *,
                 backend: str | None = None) -> None:
    """Decode + scatter ``payloads`` (one per store block) into ``block_ids``'s slots
    (an id of ``SKIP_BLOCK``, -1, leaves that engine block untouched)."""
    check_codec(codec)
    src = _paged(kv_caches, block_ids, layout, engine, writing=True)
    dispatch.unpack(src, codec, payloads, backend)


def _hf(past_key_values, layout: KVLayout, start: int, num_tokens: int | None,
        batch_index: int) -> PagedSource:
    if not isinstance(layout, KVLayout):
        raise InvalidArgument(f"layout must be a KVLayout, got {type(layout).__name__}")
    pairs = hf_layers(past_key_values)
    if len(pairs) != layout.num_layers:
        raise LayoutMismatch(f"expected {layout.num_layers} HF layers, got {len(pairs)}")
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for p in pairs for t in p):
        raise LayoutMismatch("HF keys and values must be 4-D tensors [batch, H, seq, D]")
    T = layout.block_tokens
    seq = pairs[0][0].shape[2]
    if not isinstance(start, int) or start < 0:
        raise InvalidArgument(f"start must be a non-negative int, got {start!r}")
    if num_tokens is None:
        num_tokens = max(seq - start, 0) // T * T
    if not isinstance(num_tokens, int) or num_tokens < 0 or num_tokens % T:
        raise InvalidArgument(f"num_tokens must be a multiple of block_tokens {T}, "
                              f"got {num_tokens!r}")
    views = [hf_views(k, v, layout, batch_index, start, num_tokens) for k, v in pairs]
    ids = torch.arange(num_tokens // T, dtype=torch.int64, device=pairs[0][0].device)
    return paged_source([k for k, _ in views], [v for _, v in views], ids, layout, T,
                        writing=False, check_ids=False)


def pack_hf(past_key_values, layout: KVLayout, codec: str, *, start: int = 0,
            num_tokens: int | None = None, batch_index: int = 0, out=None,
            backend: str | None = None) -> list[torch.Tensor]:
    """Gather + encode tokens ``[start, start + num_tokens)`` of an HF cache.

    ``past_key_values``: ``[(K, V), ...]`` per layer with K, V ``[batch, H,
    seq, D]``, or a transformers Cache. ``num_tokens`` defaults to every
    whole store block from ``start`` on; it must be a multiple of block_tokens.
    """
    check_codec(codec)
    src = _hf(past_key_values, layout, start, num_tokens, batch_index)
    return dispatch.pack(src, codec, out, backend)


def unpack_hf(payloads, past_key_values, layout: KVLayout, codec: str, *, start: int = 0,
              batch_index: int = 0, backend: str | None = None) -> None:
    """Decode + write ``payloads`` into tokens ``[start, start + S*T)`` of an HF cache
    (whose tensors must already be that long)."""
    check_codec(codec)
    if isinstance(payloads, torch.Tensor) and payloads.dim() == 2:
        count = payloads.shape[0]
    elif isinstance(payloads, Sequence):
        count = len(payloads)
    else:
        raise InvalidArgument("payloads must be a 2-D tensor or a list of 1-D tensors")
    src = _hf(past_key_values, layout, start, count * layout.block_tokens, batch_index)
    dispatch.unpack(src, codec, payloads, backend)
