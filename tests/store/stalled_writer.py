"""A store whose next put must wait for a held SSD writer (tests of who that wait may stall).

``stalled_store`` builds, through the public API only, the one state in which
making room waits for the SSD writer: the CPU tier is full of dirty blocks
that are not leaf tails (each has a child on SSD only, so none can be dropped),
two leaf tails are pinned by read leases, and the staging buffer holds one
block whose write is parked at a ``FaultyFileSystem.hold`` gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvstore.ssd.fs import FaultyFileSystem
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.store_api import Lease
from tests.store.helpers import make_spec, payloads_for, ssd_on


@dataclass
class StalledStore:
    store: TieredStore
    fs: FaultyFileSystem
    ns: bytes
    spec: object
    pinned: list[Lease]
    next_tokens: np.ndarray  # a new 2-block prefix: its put waits for the writer
    resident_tokens: np.ndarray  # a cached one-block prefix (pinned, in the CPU tier)

    def release(self) -> None:
        self.fs.clear()
        for lease in self.pinned:
            self.store.release(lease.lease_id)


def chain(seed: int, nblocks: int, block_tokens: int) -> np.ndarray:
    return np.arange(nblocks * block_tokens, dtype=np.uint32) + seed * 100_000


def stalled_store(ssd_dir: str, spec=None) -> StalledStore:
    spec = spec or make_spec(block_tokens=16, dim=16)  # 4 KiB blocks: one page each
    bb, bt = spec.block_bytes, spec.block_tokens
    fs = FaultyFileSystem()
    store = TieredStore(StoreConfig(
        cpu_bytes=4 * bb, cpu_page_bytes=bb, ssd_bytes=64 << 20, ssd_dir=ssd_dir,
        segment_bytes=1 << 20, demotion_buffer_bytes=bb, write_behind_seconds=0,
        ssd_factory=ssd_on(fs)))
    ns = store.register(spec)
    a, d, e, f, g = (chain(i, 2, bt) for i in range(1, 6))

    def put(tokens):
        assert store.put(ns, tokens, payloads_for(ns, spec, tokens)) == len(tokens)
        store.wait_writes()

    put(a)
    put(d)
    store.get(ns, a[:bt])  # A0, D0 most recent: A1, D1 go first
    store.get(ns, d[:bt])
    put(e[:bt])  # demotes A1 (to SSD only): A0 is no longer a leaf
    put(f[:bt])  # demotes D1
    pinned = [store.lease_read(ns, e[:bt]), store.lease_read(ns, f[:bt])]
    fs.hold("pwritev")
    return StalledStore(store, fs, ns, spec, pinned, g, e[:bt])
