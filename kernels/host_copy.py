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
    d, s = arrays
    if d.shape == s.shape and run_contiguous(d) and run_contiguous(s):
        run = np.dtype((np.void, d.shape[-1] * d.itemsize))
        d, s = d.view(run)[..., 0], s.view(run)[..., 0]
    np.copyto(d, s)


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
