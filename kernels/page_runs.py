"""How to move one call's engine blocks: runs of consecutive ids as one copy each.

A store block is ``R`` engine blocks (pages) of one request's block table, and
the engines hand those out mostly in order: vLLM's free queue starts as
``0, 1, 2, ...`` (ascending runs) and takes freed requests' blocks back
last-first (descending runs). An ascending run of pages is one contiguous
piece of both the cache and the payload, and moving it as one piece
(``np.positive`` over 8-byte words: a vector loop) ran at 1.05-1.1x a
``memcpy`` of the same bytes in ``put_paged`` on the development machine
(32 KiB pages), where a gather page by page (``np.take``: a ``memmove`` per
page) ran at 0.85-0.9x. Descending runs stay page by page: the vector loop
over pages in reverse order ran at 0.55-0.6x, ``np.take`` at 0.85-1.1x.

``pieces(ids, R, page_bytes)`` cuts the ids into :class:`Piece` s, each a
contiguous range of positions within one store block: a run long enough to
pay for a call of its own (``MIN_RUN_BYTES``), or the ids between those runs,
gathered in one ``np.take`` (a table with no runs is one piece per store
block: one ``np.take`` each, as small pages want). Positions holding
``SKIP_BLOCK`` (an unpack that leaves those engine blocks alone) belong to no
piece. Built with a few vectorised numpy passes (~0.1 ms for 512 ids), reused
for every layer and K/V view, and remembered for the next calls with the same
table.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from kvstore.kernels.source import SKIP_BLOCK as SKIP

# a run at least this long is moved on its own (a Python-level call, ~2 us: worth it above
# ~100 KB, where the contiguous copy's ~20 % saves more than that)
MIN_RUN_BYTES = 128 * 1024


class Piece(NamedTuple):
    """Positions ``[at, at + count)`` of a store block's ``R`` engine blocks: engine
    blocks ``first, first + 1, ...`` (a run: ``ids`` None), or ``ids`` (a view of the
    call's ids)."""

    block: int  # the store block
    at: int
    count: int
    first: int
    ids: np.ndarray | None


def pieces(ids: np.ndarray, R: int, page_bytes: int,
           min_run_bytes: int | None = None) -> tuple[Piece, ...]:
    """The pieces of ``ids`` (int64, ``S * R`` of them; ``SKIP`` allowed), in order.

    Remembered for the last few tables (by value): the connector packs and unpacks
    a model layer by layer, one call per layer with the same ids."""
    least = MIN_RUN_BYTES if min_run_bytes is None else min_run_bytes
    min_pages = max(2, -(-least // max(page_bytes, 1)))
    return _pieces(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), R, min_pages)


@functools.lru_cache(maxsize=8)
def _pieces(table: bytes, R: int, min_pages: int) -> tuple[Piece, ...]:
    ids = np.frombuffer(table, dtype=np.int64)  # read-only: the pieces' ids stay as they are
    n = ids.size
    if n == 0:
        return ()
    valid = ids != SKIP
    d = np.diff(ids)
    cont = np.zeros(n, dtype=bool)  # position i extends the run of position i - 1
    cont[1:] = (d == 1) & valid[:-1]  # (-1 + 1 is id 0: the left one must be real)
    cont[::R] = False  # store blocks are separate destinations
    starts = np.flatnonzero(~cont)
    lengths = np.diff(starts, append=n)
    long = (lengths >= min_pages) & valid[starts]
    loose = valid & ~long[np.cumsum(~cont) - 1]  # positions of no long run
    head = loose.copy()  # first and last positions of each stretch of loose ones
    head[1:] &= ~loose[:-1]
    head[::R] = loose[::R]
    tail = loose.copy()
    tail[:-1] &= ~loose[1:]
    tail[R - 1::R] = loose[R - 1::R]
    at = np.concatenate([starts[long], np.flatnonzero(head)])
    count = np.concatenate([lengths[long], np.flatnonzero(tail) + 1 - np.flatnonzero(head)])
    order = np.argsort(at, kind="stable")
    nlong = int(long.sum())
    out = []
    for k in order.tolist():
        i, c = int(at[k]), int(count[k])
        s, j = divmod(i, R)
        if k < nlong:
            out.append(Piece(s, j, c, int(ids[i]), None))
        else:
            out.append(Piece(s, j, c, 0, ids[i:i + c]))
    return tuple(out)


def source_of(view: np.ndarray, p: Piece) -> np.ndarray:
    """``view``'s engine blocks of run ``p`` (a view)."""
    return view[p.first:p.first + p.count]
