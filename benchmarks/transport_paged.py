"""The paged ops of the transport benchmark: ``put_paged`` / ``get_paged`` of vLLM caches.

The same bytes as the other ops (``batch`` store blocks of ``block_bytes``),
moved between per-layer vLLM flash caches ``[2, num_blocks, 16, H, D]``
(allocated by torch, as vLLM allocates its caches) and a namespace, through
``kvstore.client.paged_io`` as the vLLM connector calls it, with two kinds of
block tables over a cache twice the size needed:

* ``put_paged`` / ``get_paged``: a table as vLLM's free queue hands blocks out
  after some churn (:func:`engine_table`): the pool cut into requests of 1 to
  ``4 R`` blocks in random order, half of them as never-used blocks come (in
  order: an ascending run), half as freed blocks come back (vLLM frees a
  request's blocks last first: a descending run).
* ``put_paged_shuffled`` / ``get_paged_shuffled``: every page at a random place
  (no two consecutive ids but by chance): the worst case, where each 32 KiB
  page is a copy of its own at a random address.

``get_paged`` loads into a second set of caches, through another table of the
same kind, and the bytes are checked against the source once before timing.
Baselines: memcpy of the same bytes (``memcpy`` rows of the same op names,
the same copies as ``put`` / ``get_into``).
"""

from __future__ import annotations

import numpy as np
import torch

from kvstore.client.namespace import Namespace
from kvstore.client.paged_io import get_paged, put_paged
from kvstore.kernels import EngineLayout

ENGINE_BLOCK = 16
TABLES = {"": "engine", "_shuffled": "shuffled"}  # op suffix -> block table kind


def engine_table(rng: np.random.Generator, pages: int, n: int, longest: int) -> list[int]:
    """``n`` block ids as vLLM's free queue gives them after churn: ``0..pages-1`` cut
    into requests of 1 to ``longest`` blocks, the requests in random order, each
    one's ids ascending (never used) or descending (freed last block first), one
    or the other at random."""
    cuts, at = [], 0
    while at < pages:
        size = int(rng.integers(1, longest + 1))
        run = list(range(at, min(at + size, pages)))
        cuts.append(run[::-1] if rng.random() < 0.5 else run)
        at += size
    order = rng.permutation(len(cuts))
    return [i for c in order for i in cuts[c]][:n]


class PagedCaches:
    """Source and destination caches of one carrier, and the block tables."""

    def __init__(self, ns: Namespace, batch: int, seed: int):
        lay = ns.layout
        self.engine = EngineLayout("vllm_flash", ENGINE_BLOCK)
        per_block = lay.block_tokens // ENGINE_BLOCK
        pages = 2 * batch * per_block
        shape = (2, pages, ENGINE_BLOCK, lay.num_kv_heads, lay.head_dim)
        self.rng = np.random.default_rng(seed)
        self.src = [torch.empty(shape, dtype=lay.torch_dtype) for _ in range(lay.num_layers)]
        for cache in self.src:
            bits = self.rng.integers(-(1 << 15), 1 << 15, shape, dtype=np.int16)
            cache.view(torch.int16).copy_(torch.from_numpy(bits))
        self.dst = [torch.zeros_like(c) for c in self.src]
        n = batch * per_block

        def table(kind: str) -> list[int]:
            if kind == "shuffled":
                return self.rng.permutation(pages)[:n].tolist()
            return engine_table(self.rng, pages, n, 4 * per_block)

        self.ids = {kind: table(kind) for kind in TABLES.values()}  # put from src
        self.ids_out = {kind: table(kind) for kind in TABLES.values()}  # get into dst
        self.tokens = batch * lay.block_tokens

    def check(self, kind: str) -> bool:
        """The pages loaded into ``dst`` hold the bytes ``src``'s pages had."""
        a, b = self.ids[kind], self.ids_out[kind]
        return all(torch.equal(s[:, a].view(torch.int16), d[:, b].view(torch.int16))
                   for s, d in zip(self.src, self.dst))


def add_paged(m, name: str, ns: Namespace) -> None:
    """Store one prefix per table kind from paged caches, check each loads back, add
    ``name``'s paged tasks."""
    caches = PagedCaches(ns, m.batch, seed=sum(name.encode()) + 7)
    for suffix, kind in TABLES.items():
        _add_kind(m, name, ns, caches, suffix, kind)


def _add_kind(m, name: str, ns: Namespace, caches: PagedCaches, suffix: str, kind: str) -> None:
    toks = caches.rng.integers(0, 1 << 30, caches.tokens, dtype=np.uint32)
    ids, ids_out = caches.ids[kind], caches.ids_out[kind]

    def put():
        fresh = caches.rng.integers(0, 1 << 30, caches.tokens, dtype=np.uint32)  # all stored
        assert put_paged(ns, fresh, caches.src, ids, caches.engine) == caches.tokens

    def get():
        got = get_paged(ns, toks, caches.dst, ids_out, caches.engine)
        assert got == caches.tokens, f"{name}: the paged prefix was evicted"

    assert put_paged(ns, toks, caches.src, ids, caches.engine) == caches.tokens
    for d in caches.dst:
        d.zero_()
    get()
    assert caches.check(kind), f"{name}: paged bytes differ ({kind} table)"
    m.add(name, "put_paged" + suffix, put)
    m.add(name, "get_paged" + suffix, get)
