"""The paged ops of the transport benchmark: ``put_paged`` / ``get_paged`` of vLLM caches.

The same bytes as the other ops (``batch`` store blocks of ``block_bytes``),
moved between per-layer vLLM flash caches ``[2, num_blocks, 16, H, D]``
(allocated by torch, as vLLM allocates its caches) and a namespace, through
``kvstore.client.paged_io`` as the vLLM connector calls it: the store blocks'
engine blocks are a shuffled block table (pages scattered over a cache twice
the size needed). ``get_paged`` loads into a second set of caches, through
another shuffled block table, and the bytes are checked against the source
once before timing. Baselines: memcpy of the same bytes (``memcpy`` rows of
ops ``put_paged`` / ``get_paged``, the same copies as ``put`` / ``get_into``).
"""

from __future__ import annotations

import numpy as np
import torch

from kvstore.client.namespace import Namespace
from kvstore.client.paged_io import get_paged, put_paged
from kvstore.kernels import EngineLayout

ENGINE_BLOCK = 16


class PagedCaches:
    """Source and destination caches of one carrier, and the two block tables."""

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
        self.ids = self.rng.permutation(pages)[: batch * per_block].tolist()
        self.ids_out = self.rng.permutation(pages)[: batch * per_block].tolist()
        self.tokens = batch * lay.block_tokens

    def check(self) -> bool:
        """The pages loaded into ``dst`` hold the bytes ``src``'s pages had."""
        return all(torch.equal(s[:, self.ids].view(torch.int16), d[:, self.ids_out].view(torch.int16))
                   for s, d in zip(self.src, self.dst))


def add_paged(m, name: str, ns: Namespace) -> None:
    """Store one prefix from paged caches, check it loads back, add ``name``'s paged tasks."""
    caches = PagedCaches(ns, m.batch, seed=sum(name.encode()) + 7)
    toks = caches.rng.integers(0, 1 << 30, caches.tokens, dtype=np.uint32)

    def put():
        fresh = caches.rng.integers(0, 1 << 30, caches.tokens, dtype=np.uint32)  # all stored
        assert put_paged(ns, fresh, caches.src, caches.ids, caches.engine) == caches.tokens

    def get():
        got = get_paged(ns, toks, caches.dst, caches.ids_out, caches.engine)
        assert got == caches.tokens, f"{name}: the paged prefix was evicted"

    assert put_paged(ns, toks, caches.src, caches.ids, caches.engine) == caches.tokens
    get()
    assert caches.check(), f"{name}: paged bytes differ"
    m.add(name, "put_paged", put)
    m.add(name, "get_paged", get)
