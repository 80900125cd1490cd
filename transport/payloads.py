"""Payload segments as flat byte views; ``Gathered``: one segment sent from several buffers.

``cast_bytes`` gives any buffer-protocol payload as flat bytes. A ``Gathered``
segment lets a caller's tensor go out without being staged. A block of codec ``none`` is the block's slice of every layer's K and V::

    kv [L, 2, T, H, D]            the block's payload [L, 2, B, H, D]
    layer 0 K: |..|blk i|..|  ->  | 0K | 0V | 1K | 1V | ... |
    layer 0 V: |..|blk i|..|        each piece B*H*D elements, contiguous
    ...                             in kv, but not next to each other

so its bytes are ``2 L`` contiguous pieces of the caller's tensor. A stream
carrier's receiver sees a segment only as bytes in order, so those pieces
can go straight into the ``sendmsg`` list: the tcp ``ns.put`` then copies
nothing in user space (staging every block first cost about 15 % of a
tcp put here). ``payload_size`` / ``payload_views`` are how the
connections and stream channels size and send a payload list in which any
item may be ``Gathered``; ucx sends one message per segment and joins a
``Gathered`` first (a copy, as staging was).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def cast_bytes(buf) -> memoryview:
    """``buf``'s buffer cast to a flat unsigned-byte memoryview (no copy).

    For buffer-protocol objects only (numpy arrays, mmap slices, bytes); the
    store's ``kvstore.store.buffers.byte_view`` also takes tensors and checks
    contiguity.
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view



@dataclass(frozen=True)
class Gathered:
    pieces: tuple[memoryview, ...]  # flat byte views, in the segment's order
    nbytes: int

    @classmethod
    def of(cls, pieces: Iterable) -> Gathered:
        """From buffer-protocol objects (C-contiguous numpy arrays, memoryviews)."""
        views = tuple(cast_bytes(p) for p in pieces)
        return cls(views, sum(len(v) for v in views))

    def joined(self) -> bytes:
        """The segment's bytes in one buffer (a copy: for carriers that cannot gather)."""
        return b"".join(self.pieces)


def payload_size(payload) -> int:
    if isinstance(payload, (memoryview, Gathered)):
        return payload.nbytes
    return memoryview(payload).nbytes


def whole_segments(payloads: Sequence) -> list:
    """Each payload as one buffer (a ``Gathered`` joined): for ucx, one message a segment."""
    return [p.joined() if isinstance(p, Gathered) else p for p in payloads]


def payload_views(payloads: Sequence) -> list[memoryview]:
    """Every payload's bytes as flat views, in order (a ``Gathered`` gives its pieces)."""
    views: list[memoryview] = []
    for payload in payloads:
        if isinstance(payload, Gathered):
            views.extend(payload.pieces)
        else:
            views.append(cast_bytes(payload))
    return views
