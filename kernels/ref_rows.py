"""How the torch reference moves engine blocks: gather and scatter of one layer.

A layer is a K and a V view (dim 0: engine block; other dims: slot, head, dim
in row-major order, possibly tiled; :mod:`kvstore.kernels.layouts`). Moving
blocks through such views with ``index_select`` / ``index_copy_`` is slow
where a view is strided inside a block (vLLM CPU's transposed K and AMX
tiles: 4-8x a memcpy) or has 2-byte elements (``index_copy_`` runs element by
element). So each layer is classified once per geometry (cached):

* **direct**: the view is dense in canonical order inside each block
  (vLLM flash NHD, a canonical block): one ``index_select`` / ``index_copy_``
  per store block straight between the cache and the destination (scatters on
  16-byte elements where alignment allows): one pass.
* **rows**: K and V of a block (together, or each alone) fill one dense run of
  memory, a "row" (a vLLM CPU block is ``H * 2*bs*D`` values; flash HND's K
  block is ``H*bs*D``). Whole rows move with ``index_select`` /
  ``index_copy_`` over a ``[num_blocks, W]`` view (memcpy-like), and the
  in-block reordering is a strided copy on the gathered rows (cache-friendly,
  fused with the codec's dtype conversion on a pack).
* **strided**: anything else (HF token ranges, whose blocks are spread over
  the sequence): ``index_select`` / ``index_copy_`` on the views themselves.

On CPU tensors of one dtype every such move runs in the calling thread
through numpy (:mod:`.host_copy`: ``np.take``, fancy assignment,
``np.copyto``), never in torch's thread pool; ``index_select`` /
``index_copy_`` / ``copy_`` serve other devices and dtype conversions.

Destinations (gather) and sources (scatter) are canonical ``[S, T, H, D]``
tensors of any strides and, on a gather, any float dtype, or lists of S
``[T, H, D]`` tensors (payload slots of an arena).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvstore.kernels import host_copy
from kvstore.kernels.source import SKIP_BLOCK, PagedSource

Canon = torch.Tensor | Sequence[torch.Tensor]  # [S, T, H, D], or S tensors [T, H, D]


@dataclass(frozen=True)
class Part:
    """One K or V view inside a row: inner shape, strides and offset (elements)."""

    kv: int  # 0 = K, 1 = V
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class Plan:
    """How one layer moves: ``kind`` is "direct", "rows" or "strided"; for "rows",
    groups of parts that share a dense row of ``widths[i]`` elements."""

    kind: str
    groups: tuple[tuple[Part, ...], ...] = ()
    widths: tuple[int, ...] = ()


def _inner_offsets(shape, strides) -> torch.Tensor:
    off = torch.zeros((), dtype=torch.int64)
    for size, stride in zip(shape, strides):
        off = off.unsqueeze(-1) + torch.arange(size, dtype=torch.int64) * stride
    return off.flatten()


def _dense(parts: Sequence[Part], block_stride: int) -> int | None:
    """Width of the dense run the parts tile exactly (each element once), or None."""
    if any(s < 0 for p in parts for s in p.strides):
        return None
    offs = torch.cat([p.offset + _inner_offsets(p.shape, p.strides) for p in parts])
    width = int(offs.numel())
    if width > block_stride > 0 or int(offs.min()) != 0:
        return None
    return width if torch.equal(offs.sort().values, torch.arange(width)) else None


@functools.lru_cache(maxsize=256)
def _plan(k_geom: tuple, v_geom: tuple, v_minus_k: int | None) -> Plan:
    """``*_geom``: (inner shape, inner strides, block stride) of K and V;
    ``v_minus_k``: V's storage offset minus K's when they share a storage, else None."""
    (k_shape, k_strides, k_block), (v_shape, v_strides, v_block) = k_geom, v_geom
    if k_strides == _contiguous(k_shape) and v_strides == _contiguous(v_shape):
        return Plan("direct")
    k_off, v_off = (0, v_minus_k) if v_minus_k is not None and v_minus_k >= 0 \
        else (-(v_minus_k or 0), 0)
    both = (Part(0, k_shape, k_strides, k_off), Part(1, v_shape, v_strides, v_off))
    if v_minus_k is not None and k_block == v_block:
        width = _dense(both, k_block)
        if width is not None:
            return Plan("rows", (both,), (width,))
    alone = ((Part(0, k_shape, k_strides, 0),), (Part(1, v_shape, v_strides, 0),))
    widths = (_dense(alone[0], k_block), _dense(alone[1], v_block))
    if None in widths:
        return Plan("strided")
    return Plan("rows", alone, widths)


def _contiguous(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= size
    return tuple(strides[::-1])


def plan(k: torch.Tensor, v: torch.Tensor) -> Plan:
    """The plan of one layer's views (cached per geometry)."""
    same = k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()

    def geom(t: torch.Tensor) -> tuple:
        block = t.stride(0) if t.shape[0] > 1 else sys.maxsize  # one block: no neighbour
        return tuple(t.shape[1:]), tuple(t.stride()[1:]), block

    return _plan(geom(k), geom(v), v.storage_offset() - k.storage_offset() if same else None)


def _wide_dtype(*ts: torch.Tensor) -> torch.dtype:
    """The widest element (16, 8, 4 bytes) every tensor of ``ts`` can be viewed as:
    index_copy_ then moves that many bytes per element (~2.5x faster than 2-byte
    ones). index_select needs no help: it copies contiguous slices with memcpy
    (and is slower on the wide view)."""
    for dt in (torch.complex128, torch.int64, torch.int32):
        try:
            for t in ts:
                if t.element_size() >= dt.itemsize:
                    raise RuntimeError
                t.view(dt)
        except RuntimeError:
            continue
        return dt
    return ts[0].dtype


def _wide(*ts: torch.Tensor) -> list[torch.Tensor]:
    dt = _wide_dtype(*ts)
    return [t.view(dt) for t in ts]


def _put(view: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> None:
    """``view[ids] = rows``: numpy on the CPU, else ``index_copy_`` on wide elements."""
    if not host_copy.put(view, ids, rows):
        view_w, rows_w = _wide(view, rows)
        view_w.index_copy_(0, ids, rows_w)


def _per_block(c: Canon) -> list[torch.Tensor]:
    return list(c.unbind(0)) if isinstance(c, torch.Tensor) else list(c)


def _tiled(c: Canon, S: int, R: int, inner: tuple[int, ...]) -> list[torch.Tensor] | torch.Tensor:
    """Canonical ``[S, T, H, D]`` (or per-block ``[T, H, D]``) seen as ``[S, R, *inner]``
    (or ``[R, *inner]`` each): slots and dims split into the view's tiles."""
    def split(t: torch.Tensor, lead: int) -> torch.Tensor:
        t = t.unflatten(lead, (R, t.shape[lead] // R))
        slot_dims, head, dim_dims = _split_inner(inner, t.shape[lead + 1], t.shape[lead + 2])
        t = t.unflatten(lead + 1, slot_dims) if len(slot_dims) != 1 else t
        return t.unflatten(-1, dim_dims) if len(dim_dims) != 1 else t
    if isinstance(c, torch.Tensor):
        return split(c, 1)
    return [split(t, 0) for t in c]


@functools.lru_cache(maxsize=256)
def _split_inner(inner: tuple[int, ...], ebs: int, H: int):
    """``inner`` as (slot dims, head dim, head-dim dims), e.g. (2, 16), H, (32, 2)."""
    for j in range(1, len(inner)):  # at least one slot dim
        if math.prod(inner[:j]) == ebs and inner[j] == H:
            return inner[:j], H, inner[j + 1:]
    raise ValueError(f"view dims {inner} are not (slots {ebs}, heads {H}, dims)")


class Scratch:
    """Temporaries reused across the layers of one call: every layer needs the same
    shapes, and a fresh large CPU buffer costs its page faults again each time."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        key = (shape, dtype, device)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf


def _rows(view: torch.Tensor, part: Part, width: int) -> torch.Tensor:
    """The ``[num_blocks, width]`` run of memory the view's group fills."""
    return view.as_strided((view.shape[0], width), (view.stride(0), 1),
                           view.storage_offset() - part.offset)


def _tiles(rows: torch.Tensor, part: Part) -> torch.Tensor:
    """``part`` inside contiguous rows ``[n, width]``: ``[n, *part.shape]``."""
    return rows.as_strided((rows.shape[0], *part.shape), (rows.shape[1], *part.strides),
                           rows.storage_offset() + part.offset)


def gather(src: PagedSource, layer: int, dst: tuple[Canon, Canon],
           scratch: Scratch | None = None) -> None:
    """Copy ``src``'s store blocks of ``layer`` into canonical K and V ``dst``."""
    scratch = scratch or Scratch()
    views = (src.k[layer], src.v[layer])
    S, ids = src.num_store_blocks, src.block_ids
    R = ids.numel() // S
    p = plan(*views)
    if p.kind == "direct":
        for view, d in zip(views, dst):
            blocks = _per_block(d)
            if host_copy.take_blocks(view, ids, blocks, R):  # one pass, in this thread
                continue
            if all(b.is_contiguous() and b.dtype == view.dtype for b in blocks):
                for s, b in enumerate(blocks):  # one pass, straight into the destination
                    host_copy.take(view, ids[s * R:(s + 1) * R], b.view(R, *view.shape[1:]))
            else:  # a dtype conversion or a transpose follows anyway
                got = scratch.get((ids.numel(), *view.shape[1:]), view.dtype, view.device)
                host_copy.take(view, ids, got)
                _copy_canon(d, got, S, R, tuple(view.shape[1:]))
        return
    if p.kind == "strided":
        for view, d in zip(views, dst):
            got = torch.empty((ids.numel(), *view.shape[1:]), dtype=view.dtype, device=view.device)
            host_copy.take(view, ids, got)
            _copy_canon(d, got, S, R, tuple(view.shape[1:]))
        return
    for parts, width in zip(p.groups, p.widths):
        view = views[parts[0].kv]
        got = scratch.get((ids.numel(), width), view.dtype, view.device)
        host_copy.take(_rows(view, parts[0], width), ids, got)
        for part in parts:
            _copy_canon(dst[part.kv], _tiles(got, part), S, R, part.shape)


def _copy_canon(d: Canon, tiles: torch.Tensor, S: int, R: int, inner: tuple) -> None:
    """Canonical ``d`` <- ``tiles`` ``[S*R, *inner]`` (any strides, any dtypes)."""
    tiled = _tiled(d, S, R, inner)
    if isinstance(tiled, torch.Tensor):
        host_copy.copy(tiled, tiles.unflatten(0, (S, R)))
    else:
        for s, t in enumerate(tiled):
            host_copy.copy(t, tiles[s * R:(s + 1) * R])


def _canon_to(tiles: torch.Tensor, b: Canon, S: int, R: int, inner: tuple) -> None:
    """``tiles`` ``[S*R, *inner]`` <- canonical ``b``."""
    tiled = _tiled(b, S, R, inner)
    if isinstance(tiled, torch.Tensor):
        host_copy.copy(tiles.unflatten(0, (S, R)), tiled)
    else:
        for s, t in enumerate(tiled):
            host_copy.copy(tiles[s * R:(s + 1) * R], t)


def scatter(src: PagedSource, layer: int, blocks: tuple[Canon, Canon],
            scratch: Scratch | None = None) -> None:
    """Write canonical K and V ``blocks`` (the cache's dtype) into ``src``'s engine
    blocks of ``layer``; engine blocks with id SKIP_BLOCK are left alone."""
    scratch = scratch or Scratch()
    views = (src.k[layer], src.v[layer])
    S, ids = src.num_store_blocks, src.block_ids
    R = ids.numel() // S
    keep = ids != SKIP_BLOCK
    holes = not bool(keep.all())
    kept = ids[keep] if holes else ids
    p = plan(*views)
    if p.kind == "direct":
        for view, b in zip(views, blocks):
            if host_copy.put_blocks(view, ids, _per_block(b), R, keep if holes else None):
                continue
            for s, block in enumerate(_per_block(b)):
                sid, rows = ids[s * R:(s + 1) * R], block.reshape(R, *view.shape[1:])
                if holes:
                    sid, rows = sid[keep[s * R:(s + 1) * R]], rows[keep[s * R:(s + 1) * R]]
                if sid.numel():
                    _put(view, sid, rows)
        return
    if p.kind == "strided":
        for view, b in zip(views, blocks):
            rows = torch.empty((S * R, *view.shape[1:]), dtype=view.dtype, device=view.device)
            _canon_to(rows, b, S, R, tuple(view.shape[1:]))
            _put(view, kept, rows[keep] if holes else rows)
        return
    for parts, width in zip(p.groups, p.widths):
        view = views[parts[0].kv]
        new = scratch.get((ids.numel(), width), view.dtype, view.device)
        for part in parts:
            _canon_to(_tiles(new, part), blocks[part.kv], S, R, part.shape)
        _put(_rows(view, parts[0], width), kept, new[keep] if holes else new)
