"""Store blocks straight between a paged engine cache and a namespace.

The paged-cache calls of the client: the kernels' fused gather + encode
(``pack_paged``) and decode + scatter (``unpack_paged``) on one side, a
namespace's backend on the other, with no canonical ``[L, 2, n, H, D]`` tensor
in between::

    put_paged(ns, tokens, caches, block_ids, engine, extra=b"") -> tokens cached
    get_paged(ns, tokens, caches, block_ids, engine, extra=b"", skip=0) -> tokens found

``caches`` holds one tensor per layer in ``engine``'s layout
(``kvstore.kernels.EngineLayout``); ``block_ids[j]`` is the engine block
holding tokens ``[j*bs, (j+1)*bs)`` (a vLLM request's block table), so store
block ``i`` is engine blocks ``block_ids[i*R:(i+1)*R]``, ``R = block_tokens / bs``.

On a ``LeasingStore`` (``capabilities.leases``: the embedded store, shm)
blocks are packed straight into the arena slots of a write lease and unpacked
straight out of a read lease: one pass over the data, plus the codec. Other
carriers (tcp, ucx) get packed payloads to send, and unpack what they received.

A daemon that cannot be reached is a miss (0 tokens stored or found) unless
the namespace is strict, as for ``Namespace.put`` / ``get``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.client.namespace import Namespace
from kvstore.client.transfer import (
    STREAM,
    PagedTransfers,
    geometry,
    host_buffer,
    timeline_of,
)
from kvstore.errors import InvalidArgument
from kvstore.kernels import EngineLayout, pack_paged
from kvstore.kernels.streams import Timeline
from kvstore.tokens import as_tokens, full_blocks


def _geometry(ns: Namespace, engine: EngineLayout) -> tuple[int, int]:
    """``(T, R)``: tokens per store block, engine blocks per store block."""
    return geometry(ns, engine)


class _Packed(Sequence):
    """``payloads[i]`` packs store block i on demand, for a carrier's ``put``.

    The first access packs every block from there to the end in one call (a
    put asks for the blocks the store lacks, in order); an earlier block asked
    for later is packed alone.
    """

    def __init__(self, ns, caches, block_ids: list[int], engine: EngineLayout, n: int, R: int,
                 tl: Timeline):
        self._args = (ns, caches, block_ids, engine)
        self._n, self._R, self._tl = n, R, tl
        self._done: dict[int, object] = {}

    def __len__(self) -> int:
        return self._n

    def _pack(self, lo: int, hi: int) -> None:
        ns, caches, block_ids, engine = self._args
        ids = block_ids[lo * self._R: hi * self._R]
        tl = self._tl
        if not tl.separate_memory:
            rows = pack_paged(caches, ids, ns.layout, ns.codec.codec, engine)
            for i, row in enumerate(rows):
                self._done[lo + i] = row.numpy()
            return
        # packed on the device, then one copy into the payload buffer the carrier sends
        s = tl.stream(STREAM)
        tl.wait(s, tl.record(tl.compute(), "written"))
        stage = tl.empty((hi - lo, ns.spec.block_bytes), torch.uint8, s)
        with tl.on(s):
            tl.kernel(s, "pack")
            pack_paged(caches, ids, ns.layout, ns.codec.codec, engine, out=stage)
        host = host_buffer(tuple(stage.shape), pinned=True)
        tl.copy(host, stage, s, "d2h")
        tl.record(s, "copied").synchronize()
        for i, row in enumerate(host.unbind(0)):
            self._done[lo + i] = row.numpy()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not 0 <= i < self._n:
            raise IndexError(i)
        if i not in self._done:
            self._pack(i, self._n if not self._done else i + 1)
        return self._done[i]


def put_paged(ns: Namespace, tokens, caches: Sequence[torch.Tensor], block_ids: Sequence[int],
              engine: EngineLayout, extra: bytes = b"", *, timeline: Timeline | None = None) -> int:
    """Store the whole store blocks of ``tokens`` from the engine ``caches``.

    Only blocks the store lacks are packed. Returns the tokens now cached for
    this prefix (as ``Namespace.put``; 0 when the daemon is unreachable and
    the namespace not strict).
    """
    toks = as_tokens(tokens)
    T, R = _geometry(ns, engine)
    ids = list(block_ids)
    n = min(full_blocks(toks, T), len(ids) // R)
    if n == 0:
        return 0
    toks = toks[: n * T]
    tl = timeline_of(caches, timeline)
    if not ns.backend.capabilities.leases:
        packed = _Packed(ns, caches, ids, engine, n, R, tl)
        return ns.availability.call(lambda: ns.backend.put(ns.id, toks, packed, extra), 0)
    return ns.availability.call(lambda: _put_leased(ns, toks, caches, ids, engine, extra, tl), 0)


def _put_leased(ns: Namespace, toks, caches, ids: list[int], engine: EngineLayout,
                extra: bytes, tl: Timeline) -> int:
    """The connector's save path, run to completion: packed into the write lease's
    slots (through one device staging copy on a device), committed once copied."""
    stored = []
    moves = PagedTransfers(ns, caches, engine, tl, on_saved=lambda _, n: stored.append(n))
    moves.open_saves([("put", toks, ids, extra)])
    moves.flush_saves(wait=True)
    return stored[-1] if stored else ns.backend.lookup(ns.id, toks, extra)


def get_paged(ns: Namespace, tokens, caches: Sequence[torch.Tensor], block_ids: Sequence[int],
              engine: EngineLayout, extra: bytes = b"", skip: int = 0, *,
              timeline: Timeline | None = None) -> int:
    """Load the cached prefix of ``tokens`` into the engine blocks ``block_ids``.

    Tokens ``[0, skip)`` (``skip`` a multiple of the engine block size) are in
    the engine already and their blocks are not written: a lossy codec must
    not overwrite blocks other requests share. Returns the leading tokens the
    store had (a multiple of block_tokens; those from ``skip`` on are loaded).
    """
    if skip % engine.block_size:
        raise InvalidArgument(f"skip {skip} is not a multiple of the engine's block_size "
                              f"{engine.block_size}")
    toks, ids = as_tokens(tokens), list(block_ids)
    tl = timeline_of(caches, timeline)
    return ns.availability.call(lambda: _get(ns, toks, caches, ids, engine, extra, skip, tl), 0)


def _get(ns: Namespace, toks, caches, ids: list[int], engine: EngineLayout, extra: bytes,
         skip: int, tl: Timeline) -> int:
    """The connector's load path, run to completion: the data is in the caches for
    the caller's stream, and the read lease released, when it returns."""
    moves = PagedTransfers(ns, caches, engine, tl)
    n = moves.load(toks, ids, extra, skip, wait=True)
    moves.wait_all_layers()
    return n
