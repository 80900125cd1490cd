"""TieredStore over the real SSDTier (segment files in a temporary directory)."""

import errno
import logging
import os
import random
import time

import pytest

from kvstore.errors import StorageError
from kvstore.ssd.fs import FaultyFileSystem
from kvstore.ssd.tier import SSDTier
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, payloads_for

SPEC = make_spec(block_tokens=4, layers=2, heads=2, dim=64)  # 4 KiB blocks


def config(path, **kw):
    kw.setdefault("cpu_bytes", 64 * 4096)  # 64 blocks
    kw.setdefault("ssd_bytes", 4 << 20)
    kw.setdefault("segment_bytes", 256 << 10)
    return StoreConfig(ssd_dir=str(path), cpu_page_bytes=4096, **kw)


def prompts(n, blocks=4, base=0):
    return [list(range(base + i * 1000, base + i * 1000 + 4 * blocks)) for i in range(n)]


def dir_size(path) -> int:
    """Bytes in the directory now (a segment freed while we list it no longer counts)."""
    total = 0
    for entry in os.scandir(path):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            pass
    return total


def test_demote_flush_restart_and_promote(tmp_path):
    ps = prompts(48)  # 192 blocks, CPU holds 64
    with TieredStore(config(tmp_path)) as s:
        ns = s.register(SPEC)
        for t in ps:
            assert s.put(ns, t, payloads_for(ns, SPEC, t)) == 16
        assert s.tier_stats("cpu").demotions >= 128
        for t in ps[:4]:
            assert s.get(ns, t) == (16, payloads_for(ns, SPEC, t))
        s.flush()
        ssd = s.tier_stats("ssd")
        assert ssd.blocks >= 192 and ssd.used_bytes <= 4 << 20
    with TieredStore(config(tmp_path)) as s2:
        assert s2.namespaces() == [SPEC]
        for t in ps:
            assert s2.get(ns, t) == (16, payloads_for(ns, SPEC, t))
        deadline = time.monotonic() + 30
        while s2.tier_stats("cpu").promotions == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s2.tier_stats("cpu").promotions > 0
        s2.check()


def test_directory_never_exceeds_the_cap_under_a_long_workload(tmp_path):
    cap = 1 << 20
    rng = random.Random(3)
    with TieredStore(config(tmp_path, ssd_bytes=cap, segment_bytes=128 << 10,
                            cpu_bytes=32 * 4096, demotion_buffer_bytes=64 << 10)) as s:
        ns = s.register(SPEC)
        for step in range(1500):
            toks = [rng.randrange(8) for _ in range(4)] + list(range(4 * rng.randrange(5)))
            if rng.random() < 0.6:
                s.put(ns, toks, payloads_for(ns, SPEC, toks))
            else:
                n, got = s.get(ns, toks)
                assert got == payloads_for(ns, SPEC, toks)[: n // 4]
            if step % 50 == 0:
                assert dir_size(tmp_path) <= cap
                assert s.tier_stats("cpu").used_bytes <= 32 * 4096
            if step % 300 == 299:
                s.flush()
        s.wait_writes()
        assert dir_size(tmp_path) <= cap
        assert s.tier_stats("ssd").evictions > 0
        s.check()


def test_a_failing_disk_degrades_without_hurting_the_cpu_tier(tmp_path, caplog):
    fs = FaultyFileSystem()

    def factory(directory, capacity, segment_bytes, compression):
        return SSDTier(directory, capacity, segment_bytes=segment_bytes,
                       compression=compression, fs=fs)

    ps = prompts(40)
    with TieredStore(config(tmp_path, ssd_factory=factory)) as s:
        ns = s.register(SPEC)
        for t in ps[:8]:
            s.put(ns, t, payloads_for(ns, SPEC, t))
        s.flush()
        fs.inject("pwritev", errno.ENOSPC, times=None)
        with caplog.at_level(logging.ERROR):
            for t in ps[8:]:
                assert s.put(ns, t, payloads_for(ns, SPEC, t)) == 16
            s.wait_writes()
        assert s.tier_stats("ssd").degraded
        assert any("degraded" in r.getMessage() for r in caplog.records)
        with pytest.raises(StorageError):
            s.flush()
        for t in ps:
            n, got = s.get(ns, t)
            assert got == payloads_for(ns, SPEC, t)[: n // 4]
        for t in ps[:8]:  # flushed before the fault: still readable from disk
            assert s.get(ns, t)[0] == 16
        assert s.get(ns, ps[-1])[0] == 16
        s.check()
        fs.clear()
    with TieredStore(config(tmp_path)) as s2:  # restart: the flushed blocks are intact
        for t in ps[:8]:
            assert s2.get(ns, t) == (16, payloads_for(ns, SPEC, t))


def test_corrupt_segments_never_serve_wrong_bytes(tmp_path):
    ps = prompts(24)
    with TieredStore(config(tmp_path)) as s:
        ns = s.register(SPEC)
        for t in ps:
            s.put(ns, t, payloads_for(ns, SPEC, t))
        s.flush()
    rng = random.Random(5)
    for entry in os.scandir(tmp_path):
        if entry.name.endswith(".seg") or entry.name.startswith("seg"):
            with open(entry.path, "r+b") as f:
                size = os.path.getsize(entry.path)
                for _ in range(20):
                    f.seek(rng.randrange(size))
                    f.write(bytes([rng.randrange(256)]))
    with TieredStore(config(tmp_path)) as s2:
        served = 0
        for t in ps:
            n, got = s2.get(ns, t)
            assert got == payloads_for(ns, SPEC, t)[: n // 4]
            served += n
        assert served > 0
        s2.check()
