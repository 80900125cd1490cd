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

from kvstore.client.codec import _as_uint8
from kvstore.client.namespace import Namespace
from kvstore.errors import InvalidArgument
from kvstore.kernels import SKIP_BLOCK, EngineLayout, pack_paged, unpack_paged
from kvstore.store_api import read_lease, write_lease
from kvstore.tokens import as_tokens, full_blocks


def _geometry(ns: Namespace, engine: EngineLayout) -> tuple[int, int]:
    """``(T, R)``: tokens per store block, engine blocks per store block."""
    T = ns.block_tokens
    if T % engine.block_size:
        raise InvalidArgument(f"store block_tokens {T} is not a multiple of the engine's "
                              f"block_size {engine.block_size}")
    return T, T // engine.block_size


class _Packed(Sequence):
    """``payloads[i]`` packs store block i on demand, for a carrier's ``put``.

    The first access packs every block from there to the end in one call (a
    put asks for the blocks the store lacks, in order); an earlier block asked
    for later is packed alone.
    """

    def __init__(self, ns, caches, block_ids: list[int], engine: EngineLayout, n: int, R: int):
        self._args = (ns, caches, block_ids, engine)
        self._n, self._R = n, R
        self._done: dict[int, object] = {}

    def __len__(self) -> int:
        return self._n

    def _pack(self, lo: int, hi: int) -> None:
        ns, caches, block_ids, engine = self._args
        ids = block_ids[lo * self._R: hi * self._R]
        rows = pack_paged(caches, ids, ns.layout, ns.codec.codec, engine)
        for i, row in enumerate(rows):
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
              engine: EngineLayout, extra: bytes = b"") -> int:
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
    if not ns.backend.capabilities.leases:
        packed = _Packed(ns, caches, ids, engine, n, R)
        return ns.availability.call(lambda: ns.backend.put(ns.id, toks, packed, extra), 0)
    return ns.availability.call(lambda: _put_leased(ns, toks, caches, ids, engine, R, extra), 0)


def _put_leased(ns: Namespace, toks, caches, ids: list[int], engine: EngineLayout, R: int,
                extra: bytes) -> int:
    be = ns.backend
    with write_lease(be, ns.id, toks, extra) as held:
        if held.lease.slots:
            first = held.lease.first_block
            slots = [_as_uint8(be.read_slot(slot)) for slot in held.lease.slots]
            pack_paged(caches, ids[first * R: (first + len(slots)) * R], ns.layout,
                       ns.codec.codec, engine, out=slots)
    return held.stored


def _unpack(ns, payloads: list, n: int, caches, block_ids: list[int], engine: EngineLayout,
            skip: int) -> None:
    """Scatter store blocks ``payloads`` (the first ``n`` tokens) into the engine,
    leaving the engine blocks of tokens ``[0, skip)`` alone."""
    T, R = _geometry(ns, engine)
    count = min(n // T, len(payloads), len(block_ids) // R)
    first = skip // T
    if first >= count:
        return
    ids = list(block_ids[first * R: count * R])
    held = skip // engine.block_size - first * R  # engine blocks the engine holds already
    ids[:held] = [SKIP_BLOCK] * held
    rows = [p if isinstance(p, torch.Tensor) else _as_uint8(p) for p in payloads[first:count]]
    unpack_paged(rows, caches, ids, ns.layout, ns.codec.codec, engine)


def get_paged(ns: Namespace, tokens, caches: Sequence[torch.Tensor], block_ids: Sequence[int],
              engine: EngineLayout, extra: bytes = b"", skip: int = 0) -> int:
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
    if ns.backend.capabilities.leases:
        load = _get_leased
    else:
        load = _get_copied
    return ns.availability.call(lambda: load(ns, toks, caches, ids, engine, extra, skip), 0)


def _get_copied(ns: Namespace, toks, caches, ids: list[int], engine: EngineLayout,
                extra: bytes, skip: int) -> int:
    n, payloads = ns.backend.get(ns.id, toks, extra)
    if n:
        _unpack(ns, list(payloads), n, caches, ids, engine, skip)
    return n


def _get_leased(ns: Namespace, toks, caches, ids: list[int], engine: EngineLayout,
                extra: bytes, skip: int) -> int:
    be = ns.backend
    with read_lease(be, ns.id, toks, extra) as lease:
        n = lease.num_tokens
        if n:
            slots = [_as_uint8(be.read_slot(slot)) for slot in lease.slots]
            _unpack(ns, slots, n, caches, ids, engine, skip)
        return n
