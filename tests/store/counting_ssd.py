"""The real SSD tier, counting its calls (batched or one at a time) by thread, with an
optional gate that parks the Promoter's reads (to act on the store while a promotion
is half done)."""

from __future__ import annotations

import threading
from collections import Counter

from kvstore.ssd.fs import FaultyFileSystem
from kvstore.ssd.tier import SSDTier


class CountingSSD(SSDTier):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls: Counter = Counter()  # method name -> calls
        self.items: list[tuple[str, int]] = []  # (method, items) of the batched calls
        self.promoter_gate: threading.Event | None = None  # set: promoter reads go on
        self.promoter_parked = threading.Event()

    def _count(self, name: str, items: int = 1) -> None:
        self.calls[name] += 1
        self.items.append((name, items))

    def write(self, header, payload):
        self._count("write")
        return super().write(header, payload)

    def write_many(self, items):
        items = list(items)
        self._count("write_many", len(items))
        return super().write_many(items)

    def read(self, loc):
        self._count("read")
        return super().read(loc)

    def read_many_into(self, locs, outs):
        self._count("read_many_into", len(locs))
        gate = self.promoter_gate
        if gate is not None and threading.current_thread().name == "kvstore-promote":
            self.promoter_parked.set()
            gate.wait()
        return super().read_many_into(locs, outs)


def counting_ssd(fs: FaultyFileSystem, made: list):
    """A ``StoreConfig.ssd_factory`` making ``CountingSSD`` tiers over ``fs`` (kept in ``made``)."""

    def factory(directory, capacity_bytes, segment_bytes, compression) -> SSDTier:
        tier = CountingSSD(directory, capacity_bytes, segment_bytes=segment_bytes,
                           compression=compression, fs=fs)
        made.append(tier)
        return tier

    return factory
