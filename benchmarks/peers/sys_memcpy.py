"""numpy memcpy: the baseline. PUT copies each block into a store array, GET copies it back."""

from __future__ import annotations

import numpy as np

from benchmarks.peers.system import System
from benchmarks.peers.workload import blocks_of

SLOTS = 2  # the "store": two batches, round r in slot r % 2 (touched in warm)


class MemcpySystem(System):
    get_destination = "the worker's kept buffer (np.copyto per block)"

    def start(self) -> dict:
        self.store = np.empty((SLOTS, self.w.nbytes), dtype=np.uint8)
        return {"numpy": np.__version__}

    def warm(self) -> None:
        self.store.fill(1)

    def put(self, round_id: int) -> None:
        slot = blocks_of(self.store[round_id % SLOTS], self.w.block_bytes)
        for block, src in zip(slot, blocks_of(self.bufs.src, self.w.block_bytes)):
            np.copyto(block, src)

    def get(self, round_id: int) -> None:
        slot = blocks_of(self.store[round_id % SLOTS], self.w.block_bytes)
        for dst, block in zip(blocks_of(self.bufs.dst, self.w.block_bytes), slot):
            np.copyto(dst, block)


def make(name: str, w, bufs) -> System:
    return MemcpySystem(w, bufs)
