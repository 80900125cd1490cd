"""Raw copies of CPU tensors in one thread (numpy), whatever torch's thread count.

torch splits a large copy, ``index_select`` or ``index_copy_`` over its
thread pool, and on a small machine whose other cores are busy that runs
several times slower (and far noisier) than one thread walking it; an engine
sets torch's thread count for its own math, never for the store's copies.
numpy moves the raw bits (the same bytes, any float dtype, bfloat16
included) in the calling thread with ``memcpy``-class loops. Tensors on
another device, or a copy that converts dtypes, go to torch.
"""

from __future__ import annotations

import numpy as np
import torch

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


def host_bits(t: torch.Tensor) -> np.ndarray | None:
    """A CPU tensor's elements as a numpy array of same-size integers (no copy), any
    strides; None for other devices (or an element size numpy cannot view)."""
    if t.device.type != "cpu" or t.element_size() not in _BITS:
        return None
    return t.detach().view(_BITS[t.element_size()]).numpy()


def _both(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    if a.dtype != b.dtype:
        return None
    x, y = host_bits(a), host_bits(b)
    return None if x is None or y is None else (x, y)


def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` (same shape), in this thread on the CPU."""
    arrays = _both(dst, src)
    if arrays is None:
        dst.copy_(src)
        return
    move(*arrays)


MIN_WORD_RUN = 4096  # bytes: contiguous runs at least this long are moved 8 bytes a step


def move(dst: np.ndarray, src: np.ndarray) -> None:
    """``np.copyto(dst, src)`` for two arrays of one shape and dtype, the fastest way numpy
    has on this kind of machine.

    * Long contiguous runs (a block, a block's K or V half: ``contiguous_bytes`` of
      both at least ``MIN_WORD_RUN``) are moved as int64 words through
      ``np.positive``, a plain vector loop. ``np.copyto`` calls ``memmove``, whose
      ``rep movsb`` path (glibc uses it below its non-temporal threshold) ran at
      half speed here whenever destination and source differ by other than a
      multiple of 64 bytes (a numpy or torch buffer 16 bytes past a page against a
      page-aligned arena slot: 5.7 against 10.4 GB/s), and was slower aligned too
      (8.4 against 10.6 GB/s for a put into the arena).
    * Short runs (a transpose: ``head_dim`` elements per run) are moved as one
      opaque item each: 4.3 GB/s element by element, 6.5 GB/s run by run here.
    """
    if dst.shape != src.shape or dst.size == 0:
        np.copyto(dst, src)
        return
    if contiguous_bytes(dst, src) >= MIN_WORD_RUN:
        if dst.shape[-1] * dst.itemsize % 8 == 0:
            d, s = dst.view(np.int64), src.view(np.int64)
            if d.flags.aligned and s.flags.aligned:  # unaligned, numpy would buffer: slower
                np.positive(s, out=d)
                return
        np.copyto(dst, src)
    elif run_contiguous(dst) and run_contiguous(src):
        run = np.dtype((np.void, dst.shape[-1] * dst.itemsize))
        np.copyto(dst.view(run)[..., 0], src.view(run)[..., 0])
    else:
        np.copyto(dst, src)


def contiguous_bytes(a: np.ndarray, b: np.ndarray) -> int:
    """Bytes of the innermost axes that are one contiguous run in both ``a`` and ``b``
    (same shape): the length of each ``memcpy`` a copy between them is made of."""
    run = a.itemsize
    for size, sa, sb in zip(a.shape[::-1], a.strides[::-1], b.strides[::-1]):
        if size != 1 and (sa != run or sb != run):
            break
        run *= size
    return run


def run_contiguous(a: np.ndarray) -> bool:
    """True if ``a``'s innermost axis is one contiguous run of bytes.

    ``copy`` then moves each run as one opaque item (a memcpy) instead of
    element by element: a head-major cache written from token-major blocks is
    a strided copy of ``head_dim``-long runs, 4.3 GB/s element-wise against
    6.5 GB/s run by run on the development machine (numpy, one thread).
    """
    return a.ndim > 0 and a.size > 0 and a.shape[-1] > 1 and a.strides[-1] == a.itemsize


def checked_ids(ids: torch.Tensor, n: int) -> np.ndarray:
    """``ids`` (int64, CPU) as numpy, checked against ``n`` rows: the numpy calls
    below then never wrap or clip an id silently."""
    idx = ids.numpy()
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"block id out of range [0, {n})")
    return idx


def take(view: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> None:
    """``torch.index_select(view, 0, ids, out=out)``: one ``memcpy`` per id on the CPU
    (``out`` contiguous; ``mode="clip"`` after the range check spares numpy's
    temporary copy of ``out``)."""
    arrays = _both(out, view) if out.is_contiguous() and ids.device.type == "cpu" else None
    if arrays is None:
        torch.index_select(view, 0, ids, out=out)
        return
    dst, src = arrays
    np.take(src, checked_ids(ids, src.shape[0]), axis=0, out=dst, mode="clip")


def put(view: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> bool:
    """``view[ids] = rows`` in this thread on the CPU; False (nothing done) where the
    tensors are not both host tensors of one dtype (the caller uses torch)."""
    arrays = _both(view, rows) if ids.device.type == "cpu" else None
    if arrays is None:
        return False
    dst, src = arrays
    dst[checked_ids(ids, dst.shape[0])] = src
    return True


def take_blocks(view: torch.Tensor, ids: torch.Tensor, outs, R: int) -> bool:
    """``outs[s] = view[ids[s*R:(s+1)*R]]`` for each ``s`` (a gather of engine blocks
    into contiguous store-block rows), in this thread; False (nothing done) where
    numpy cannot (another device, another dtype, a strided ``out``). The tensors
    are seen through numpy and the ids checked once for all the blocks."""
    src = host_bits(view)
    if src is None or ids.device.type != "cpu" or not all(
            o.dtype == view.dtype and o.device.type == "cpu" and o.is_contiguous() for o in outs):
        return False
    idx, inner = checked_ids(ids, src.shape[0]), src.shape[1:]
    for s, o in enumerate(outs):
        np.take(src, idx[s * R:(s + 1) * R], axis=0, out=host_bits(o).reshape(R, *inner),
                mode="clip")
    return True


def put_blocks(view: torch.Tensor, ids: torch.Tensor, blocks, R: int,
               keep: torch.Tensor | None = None) -> bool:
    """``view[ids[s*R:(s+1)*R]] = blocks[s]`` for each ``s``, skipping the ids where
    ``keep`` is False; in this thread, False (nothing done) where numpy cannot."""
    dst = host_bits(view)
    if dst is None or ids.device.type != "cpu" or not all(
            b.dtype == view.dtype and b.device.type == "cpu" for b in blocks):
        return False
    idx, inner = ids.numpy(), dst.shape[1:]
    mask = None if keep is None else keep.numpy()
    checked_ids(ids if mask is None else ids[keep], dst.shape[0])  # range check only
    for s, b in enumerate(blocks):
        sid, rows = idx[s * R:(s + 1) * R], host_bits(b).reshape(R, *inner)
        if mask is not None:
            k = mask[s * R:(s + 1) * R]
            sid, rows = sid[k], rows[k]
        dst[sid] = rows
    return True
