"""Codec ``none`` between CPU paged caches and payload rows, all in numpy.

The common case of the vLLM connector on a CPU engine or a CPU test: every
layer's K and V views are dense in canonical order inside an engine block
(plan "direct" of :mod:`.ref_rows`), so store block ``s`` of layer ``l``,
K or V, is engine blocks ``ids[s*R:(s+1)*R]`` copied back to back into one
contiguous piece of payload row ``s``. Here each row is seen through numpy
once per call (``[L, 2, R, *inner]``) and each piece is one ``np.take`` (a
gather) or one fancy assignment (a scatter): ``memcpy`` per engine block, in
the calling thread, with no torch view per block and layer (those cost
microseconds each, a fifth of the copy at 32 KiB engine blocks). Anything
else (another device, a dtype change, a strided view) answers False and the
caller takes the general path.
"""

from __future__ import annotations

import numpy as np
import torch

from kvstore.kernels.host_copy import checked_ids, host_bits
from kvstore.kernels.ref_rows import plan
from kvstore.kernels.source import SKIP_BLOCK, PagedSource


def _layers(src: PagedSource, rows: list[torch.Tensor]):
    """``(views, arrays, R)``: numpy K/V views per layer and each row as
    ``[L, 2, R, *inner]``; None where the numpy path does not apply."""
    lay = src.layout
    dtype = lay.torch_dtype
    if src.device.type != "cpu" or src.block_ids.device.type != "cpu":
        return None
    views = []
    for k, v in zip(src.k, src.v):
        if k.dtype != dtype or v.dtype != dtype or plan(k, v).kind != "direct":
            return None
        views.append((host_bits(k), host_bits(v)))
    R = src.block_ids.numel() // max(src.num_store_blocks, 1)
    inner = views[0][0].shape[1:]
    shape = (lay.num_layers, 2, R, *inner)
    arrays = []
    for r in rows:
        if r.device.type != "cpu" or not r.is_contiguous():
            return None
        try:
            arrays.append(host_bits(r.view(dtype)).reshape(shape))
        except RuntimeError:  # a row not aligned to the dtype
            return None
    return views, arrays, R


def gather(src: PagedSource, rows: list[torch.Tensor]) -> bool:
    """Pack every store block of ``src`` into payload ``rows`` (codec none)."""
    got = _layers(src, rows)
    if got is None:
        return False
    views, arrays, R = got
    idx = checked_ids(src.block_ids, src.num_blocks)
    for layer, kv_views in enumerate(views):
        for kv, view in enumerate(kv_views):
            for s, a in enumerate(arrays):
                np.take(view, idx[s * R:(s + 1) * R], axis=0, out=a[layer, kv], mode="clip")
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
    holes = not bool(keep.all())
    checked_ids(src.block_ids[torch.from_numpy(keep)] if holes else src.block_ids, src.num_blocks)
    for s, a in enumerate(arrays):
        sid, k = ids[s * R:(s + 1) * R], keep[s * R:(s + 1) * R]
        for layer, kv_views in enumerate(views):
            for kv, view in enumerate(kv_views):
                view[sid[k] if holes else sid] = a[layer, kv][k] if holes else a[layer, kv]
    return True
