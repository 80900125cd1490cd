"""SSDTier capacity: the directory never exceeds the cap; evictions are reported exactly."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from kvstore.keys import ROOT_KEY
from kvstore.ssd.record import SSDRecordHeader
from kvstore.ssd.tier import SSDTier


def dir_bytes(path) -> tuple[int, int]:
    """(sum of file sizes, sum of allocated bytes) of a directory."""
    size = alloc = 0
    for entry in os.scandir(path):
        st = entry.stat()
        size += st.st_size
        alloc += st.st_blocks * 512
    return size, alloc


def run_workload(path, steps: int, seed: int, cap: int, seg: int) -> None:
    rnd = random.Random(seed)
    tier = SSDTier(path, capacity_bytes=cap, segment_bytes=seg)
    tier.recover()
    live: set = set()
    reported: list = []
    tier.set_eviction_callback(reported.extend)
    n_evicted = 0
    for step in range(steps):
        op = rnd.random()
        if op < 0.1:  # a batch: grouped writes that may roll segments and evict midway
            items = []
            for _ in range(rnd.randrange(2, 8)):
                n = rnd.choice([100, 4096, 9000, rnd.randrange(1, 40_000)])
                h = SSDRecordHeader(bytes([9]) * 16, rnd.randbytes(16), ROOT_KEY, [1], b"",
                                    "none", n)
                items.append((h, rnd.randbytes(n)))
            reported.clear()
            locs = tier.write_many(items)
            assert not any(isinstance(x, Exception) for x in locs)
            batch = {(h.namespace, h.key) for h, _ in items}
            live -= set(reported)
            live |= batch - set(reported)  # a batch may evict its own first records
            n_evicted += len(reported)
            for (h, data), loc in zip(items, locs):
                if (h.namespace, h.key) not in reported:
                    assert tier.read(loc) == data
        elif op < 0.75:
            ns = bytes([rnd.randrange(3)]) * 16
            key = rnd.randbytes(16) if rnd.random() < 0.9 or not live else rnd.choice(
                sorted(live))[1]
            n = rnd.choice([1, 100, 3000, 4096, 9000, 30_000, rnd.randrange(1, 60_000)])
            data = rnd.randbytes(n) if rnd.random() < 0.7 else bytes(n)
            h = SSDRecordHeader(ns, key, ROOT_KEY, np.arange(rnd.randrange(0, 64)), b"", "none", n)
            reported.clear()
            tier.write(h, data)
            assert len(set(reported)) == len(reported)
            assert set(reported) <= live | {(ns, key)}
            live -= set(reported)
            n_evicted += len(reported)
            live.add((ns, key))
        elif op < 0.85 and live:
            victims = rnd.sample(sorted(live), min(len(live), rnd.randrange(1, 4)))
            reported.clear()
            tier.remove_many(victims)
            live -= set(reported) | set(victims)
            n_evicted += len(reported)
        elif op < 0.9:
            tier.save_namespaces({bytes([i]) * 16: {"n": "x" * rnd.randrange(200)}
                                  for i in range(rnd.randrange(4))})
        elif op < 0.97:
            tier.flush()
        else:
            tier.close()
            tier = SSDTier(path, capacity_bytes=cap, segment_bytes=seg)
            tier.recover()
            tier.set_eviction_callback(reported.extend)
        assert set(tier.keys()) == live, step
        size, alloc = dir_bytes(path)
        assert size <= cap and tier.used_bytes <= cap
        assert size == tier.used_bytes
        assert alloc <= cap + (64 << 10)  # allocation granularity slack of the filesystem
    assert n_evicted > 0
    tier.close()


def test_capacity_never_exceeded(tmp_path):
    run_workload(tmp_path, steps=600, seed=1, cap=256 << 10, seg=48 << 10)


def test_capacity_tiny_segments_and_big_records(tmp_path):
    # records bigger than segment_bytes get a segment of their own
    run_workload(tmp_path, steps=300, seed=2, cap=200 << 10, seg=12 << 10)


@pytest.mark.slow
def test_capacity_long_random_workload(tmp_path):
    for seed in range(3, 8):
        run_workload(tmp_path / str(seed), steps=4000, seed=seed, cap=1 << 20, seg=96 << 10)


def test_shrunk_capacity_frees_oldest_on_recover(tmp_path):
    tier = SSDTier(tmp_path, capacity_bytes=1 << 20, segment_bytes=32 << 10)
    for i in range(100):
        h = SSDRecordHeader(b"n" * 16, i.to_bytes(16, "little"), ROOT_KEY, [i], b"", "none", 6000)
        tier.write(h, random.Random(i).randbytes(6000))
    tier.close()
    tier = SSDTier(tmp_path, capacity_bytes=256 << 10, segment_bytes=32 << 10)
    found = tier.recover()
    assert tier.used_bytes <= 256 << 10 and dir_bytes(tmp_path)[0] <= 256 << 10
    keys = [int.from_bytes(h.key, "little") for h, _ in found]
    assert keys == list(range(100 - len(keys), 100))  # the newest survive
    tier.close()
