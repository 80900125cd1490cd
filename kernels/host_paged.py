"""Codec ``none`` between CPU paged caches and payload rows, all in numpy.

The common case of the vLLM connector on a CPU engine or a CPU test: every
layer's K and V views are dense in canonical order inside an engine block
(plan "direct" of :mod:`.ref_rows`), so store block ``s`` of layer ``l``,
K or V, is engine blocks ``ids[s*R:(s+1)*R]`` copied back to back into one
contiguous piece of payload row ``s``. Each view and each row is seen through
numpy once per call, as pages of 8-byte words (``[blocks, words]``), and the
ids are cut once into :mod:`.page_runs` pieces: an ascending run of
consecutive engine blocks moves as one contiguous copy (``np.positive``, a
vector loop), the ids between runs as one ``np.take`` (a gather: ``memcpy``
per engine block) or one fancy assignment (a scatter). All of it in the calling thread, with no
torch view per block and layer (those cost microseconds each, a fifth of the
copy at 32 KiB engine blocks). Anything else (another device, a dtype change,
a strided view) answers False and the caller takes the general path.
"""

from __future__ import annotations

import numpy as np
import torch

from kvstore.kernels.host_copy import checked_ids, host_bits
from kvstore.kernels.page_runs import pieces, source_of
from kvstore.kernels.ref_rows import plan
from kvstore.kernels.source import SKIP_BLOCK, PagedSource


def _words(a: np.ndarray) -> np.ndarray | None:
    """``a`` (``[n, *inner]``, each ``[*inner]`` one contiguous run) as ``[n, words]``:
    8-byte words where the page size and addresses allow (the fast vector loop), else
    ``a``'s own elements; None where numpy could only make a copy."""
    pages = a.reshape(a.shape[0], -1)
    if not np.may_share_memory(pages, a):  # a copy: writes would land in it
        return None
    if pages.shape[1] * pages.itemsize % 8 == 0:
        wide = pages.view(np.int64)
        if wide.flags.aligned:
            return wide
    return pages


def _layers(src: PagedSource, rows: list[torch.Tensor]):
    """``(views, arrays, R)``: ``[blocks, words]`` K/V views per layer and each row as
    ``[L, 2, R, words]``; None where the numpy path does not apply."""
    lay = src.layout
    dtype = lay.torch_dtype
    if src.device.type != "cpu" or src.block_ids.device.type != "cpu":
        return None
    views = []
    for k, v in zip(src.k, src.v):
        if k.dtype != dtype or v.dtype != dtype or plan(k, v).kind != "direct":
            return None
        pair = (_words(host_bits(k)), _words(host_bits(v)))
        if pair[0] is None or pair[1] is None or pair[0].dtype != pair[1].dtype:
            return None
        views.append(pair)
    R = src.block_ids.numel() // max(src.num_store_blocks, 1)
    words = views[0][0]
    shape = (lay.num_layers, 2, R, words.shape[1])
    arrays = []
    for r in rows:  # 1-D uint8 payload rows (dispatch checked them)
        if r.device.type != "cpu" or not r.is_contiguous():
            return None
        try:
            a = r.numpy().view(words.dtype).reshape(shape)
        except ValueError:  # a row not a whole number of words
            return None
        if not a.flags.aligned:  # numpy would copy through a buffer: the general path
            return None
        arrays.append(a)
    return views, arrays, R


def _page_bytes(views) -> int:
    w = views[0][0]
    return w.shape[1] * w.itemsize


def gather(src: PagedSource, rows: list[torch.Tensor]) -> bool:
    """Pack every store block of ``src`` into payload ``rows`` (codec none)."""
    got = _layers(src, rows)
    if got is None:
        return False
    views, arrays, R = got
    idx = checked_ids(src.block_ids, src.num_blocks)
    cut = pieces(idx, R, _page_bytes(views))
    for layer, kv_views in enumerate(views):
        for kv, view in enumerate(kv_views):
            for p in cut:
                out = arrays[p.block][layer, kv, p.at:p.at + p.count]
                if p.ids is None:
                    np.positive(source_of(view, p), out=out)
                else:
                    np.take(view, p.ids, axis=0, out=out, mode="clip")
    return True


def scatter(src: PagedSource, rows: list[torch.Tensor]) -> bool:
    """Unpack payload ``rows`` into ``src``'s engine blocks (codec none), leaving
    the blocks of id ``SKIP_BLOCK`` alone."""
    got = _layers(src, rows)
    if got is None:
        return False
    views, arrays, R = got
    ids = src.block_ids.numpy()
    keep = ids != SKIP_BLOCK
    checked_ids(src.block_ids if keep.all() else src.block_ids[torch.from_numpy(keep)],
                src.num_blocks)
    cut = pieces(ids, R, _page_bytes(views))
    for layer, kv_views in enumerate(views):
        for kv, view in enumerate(kv_views):
            for p in cut:
                rows_in = arrays[p.block][layer, kv, p.at:p.at + p.count]
                if p.ids is None:
                    np.positive(rows_in, out=source_of(view, p))
                else:
                    view[p.ids] = rows_in
    return True
