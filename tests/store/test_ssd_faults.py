"""SSDTier under injected faults (ENOSPC, EIO) and on-disk corruption."""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
from pathlib import Path

import pytest

from kvstore.errors import StorageError
from kvstore.ssd.fs import FaultyFileSystem, SSDFileSystem
from kvstore.ssd.record import RECORD_HEADER_SIZE
from kvstore.ssd.tier import SSDTier

_spec = importlib.util.spec_from_file_location(
    "ssd_workload", Path(__file__).with_name("ssd_workload.py"))
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


def open_tier(path, fs=None, **kw) -> SSDTier:
    kw.setdefault("capacity_bytes", 64 << 20)
    kw.setdefault("segment_bytes", 128 << 10)
    return SSDTier(path, fs=fs, **kw)


def fill(tier, ids):
    return {i: tier.write(*W.record(i)) for i in ids}


def assert_durable(path, ids, absent=(), big=(), big_bytes=300_000):
    """Every record of ``ids`` is back intact (those in ``big`` of up to ``big_bytes``)."""
    tier = open_tier(path)
    got = {}
    for header, loc in tier.recover():
        got[header.key] = tier.read(loc)
    for i in ids:
        assert got[W.key_of(i)] == W.payload_of(i, big_bytes if i in big else 24 << 10)
    for i in absent:
        assert W.key_of(i) not in got
    tier.close()
    return got


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_write_error_degrades_and_keeps_durable_data(tmp_path, caplog, err):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    locs = fill(tier, range(40))
    tier.flush()
    fs.inject("pwritev", err, times=None)
    with caplog.at_level(logging.ERROR, logger="kvstore.ssd"):
        with pytest.raises(StorageError):
            tier.write(*W.record(100))
        assert tier.degraded and tier.stats().degraded
        with pytest.raises(StorageError):  # refused while degraded
            tier.write(*W.record(101))
        with pytest.raises(StorageError):
            tier.remove(W.namespace_of(1), W.key_of(1))
    assert sum("degraded" in r.getMessage() for r in caplog.records) == 1  # logged once
    for i, loc in locs.items():  # reads still served
        assert tier.read(loc) == W.payload_of(i)
    assert tier.stats().errors >= 1
    fs.clear()
    tier.close()
    assert_durable(tmp_path, [i for i in range(40) if i != 1], absent=[100, 101])


class ShortWriteFS(SSDFileSystem):
    """The first faulty pwritev writes half its bytes, the continuation fails with ENOSPC."""

    def __init__(self):
        self.armed = False
        self.short_done = False

    def pwritev(self, fd, buffers, offset):
        if not self.armed:
            return super().pwritev(fd, buffers, offset)
        if self.short_done:
            raise OSError(errno.ENOSPC, "injected ENOSPC")
        self.short_done = True
        data = b"".join(bytes(b) for b in buffers)
        return os.pwrite(fd, data[: len(data) // 2], offset)


def test_torn_write_is_cut_back(tmp_path):
    fs = ShortWriteFS()
    tier = open_tier(tmp_path, fs)
    fill(tier, range(10))
    before = dict(tier.segment_sizes())
    fs.armed = True
    with pytest.raises(StorageError):
        tier.write(*W.record(50))
    assert tier.segment_sizes() == before  # the half record was truncated away
    assert tier.used_bytes == sum(os.path.getsize(p) for p in tmp_path.iterdir())
    fs.armed = False
    tier.reset_degraded()
    loc = tier.write(*W.record(51))  # goes on in a new segment
    assert loc.segment not in before
    tier.close()
    assert_durable(tmp_path, list(range(10)) + [51], absent=[50])


def test_torn_write_that_cannot_be_truncated(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    fill(tier, range(10))
    tier.flush()
    fs.inject("pwritev", errno.EIO)
    fs.inject("truncate", errno.EIO)
    with pytest.raises(StorageError):
        tier.write(*W.record(50))
    assert tier.used_bytes >= sum(os.path.getsize(p) for p in tmp_path.iterdir())
    tier.close()
    assert_durable(tmp_path, range(10), absent=[50])


def test_enospc_creating_a_segment(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs, segment_bytes=16 << 10)
    fill(tier, range(3))
    tier.flush()
    names = set(os.listdir(tmp_path))
    fs.inject("open", errno.ENOSPC, path="seg-", times=None)
    with pytest.raises(StorageError):
        fill(tier, range(3, 20))
    assert tier.degraded
    assert set(os.listdir(tmp_path)) <= names
    fs.clear()
    tier.close()
    assert_durable(tmp_path, range(3))


def test_enospc_in_segment_header_write_leaves_no_file(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    fs.inject("pwritev", errno.ENOSPC)  # the very first write is the segment header
    with pytest.raises(StorageError):
        tier.write(*W.record(0))
    assert os.listdir(tmp_path) == []
    assert tier.used_bytes == 0
    tier.close()


def test_fsync_error_is_sticky(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    fill(tier, range(5))
    fs.inject("fsync", errno.EIO)
    with pytest.raises(StorageError):
        tier.flush()
    assert tier.degraded
    with pytest.raises(StorageError):  # a retried fsync may lie (fsyncgate): keep failing
        tier.flush()
    with pytest.raises(StorageError):
        tier.reset_degraded()
    with pytest.raises(StorageError):
        tier.close()


def test_dir_fsync_error(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    fill(tier, range(5))
    fs.inject("fsync_dir", errno.EIO)
    with pytest.raises(StorageError):
        tier.flush()
    assert tier.degraded


def test_read_error_degrades(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    locs = fill(tier, range(3))
    fs.inject("pread", errno.EIO)
    fs.inject("preadv", errno.EIO)
    with pytest.raises(StorageError):
        tier.read(locs[0])
    plain = next(i for i, loc in locs.items() if not loc.compressed)
    with pytest.raises(StorageError):
        tier.read_into(locs[plain], bytearray(locs[plain].payload_len))
    assert tier.degraded
    assert tier.read(locs[1]) == W.payload_of(1)  # the fault is gone: reads work
    tier.close()


def test_manifest_write_failure_keeps_old_manifest(tmp_path):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs)
    tier.save_namespaces({b"a" * 16: {"v": 1}})
    fs.inject("rename", errno.EIO)
    with pytest.raises(StorageError):
        tier.save_namespaces({b"a" * 16: {"v": 2}})
    fs.clear()
    tier.close()
    tier = open_tier(tmp_path)
    assert tier.load_namespaces() == {b"a" * 16: {"v": 1}}
    tier.close()


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_corrupt_record_read_raises_without_degrading(tmp_path):
    tier = open_tier(tmp_path, compression="none")
    locs = fill(tier, range(6))
    tier.flush()
    seg_path = tmp_path / f"seg-{locs[2].segment:016x}.kvs"
    flip(seg_path, locs[2].offset + locs[2].payload_offset + locs[2].stored_len // 2)
    with pytest.raises(StorageError):
        tier.read(locs[2])
    with pytest.raises(StorageError):
        tier.read_into(locs[2], bytearray(locs[2].payload_len))
    flip(seg_path, locs[3].offset + 30)  # header
    with pytest.raises(StorageError):
        tier.read(locs[3])
    assert not tier.degraded
    assert tier.read(locs[4]) == W.payload_of(4)
    tier.close()
    got = assert_durable(tmp_path, [0, 1, 4, 5], absent=[2])
    assert W.key_of(3) not in got  # header damage: skipped by resync, the rest kept


def test_resync_past_damaged_headers(tmp_path):
    tier = open_tier(tmp_path, segment_bytes=8 << 20)
    locs = fill(tier, range(30))
    tier.close()
    path = tmp_path / f"seg-{locs[0].segment:016x}.kvs"
    for i in (3, 4, 10):
        flip(path, locs[i].offset + 1)  # magic
    flip(path, locs[20].offset + RECORD_HEADER_SIZE - 3)  # header checksum
    assert_durable(tmp_path, [i for i in range(30) if i not in (3, 4, 10, 20)],
                   absent=[3, 4, 10, 20])


def test_forged_record_inside_a_payload_is_not_accepted(tmp_path):
    """A payload holding a well-formed record (other nonce) never passes for one."""
    other = open_tier(tmp_path / "other", compression="none")
    loc = other.write(*W.record(7))
    other.close()
    src = (tmp_path / "other" / f"seg-{loc.segment:016x}.kvs").read_bytes()
    forged = src[loc.offset : loc.offset + loc.length]
    tier = open_tier(tmp_path / "t", compression="none")
    h, _ = W.record(8)
    from dataclasses import replace

    payload = forged * 3  # the payload starts on a 4 KiB boundary: so does each forged header
    victim = tier.write(replace(h, payload_len=len(payload)), payload)
    tier.close()
    flip(tmp_path / "t" / f"seg-{victim.segment:016x}.kvs", victim.offset + 2)
    tier = open_tier(tmp_path / "t")
    assert tier.recover() == []
    tier.close()


@pytest.mark.parametrize("direct", [False, True])
def test_write_many_fault_mid_batch(tmp_path, direct):
    fs = FaultyFileSystem()
    tier = open_tier(tmp_path, fs, segment_bytes=1 << 20, direct_io=direct)
    fill(tier, range(5))
    tier.flush()
    fs.inject("pwritev", errno.EIO, after=2)  # the third pwritev fails (of groups or headers)
    items = [W.record(i, 300_000) for i in range(10, 30)]
    results = tier.write_many(items)
    ok = [i for i, r in zip(range(10, 30), results) if not isinstance(r, Exception)]
    bad = [r for r in results if isinstance(r, Exception)]
    assert ok and bad and all(isinstance(r, StorageError) for r in bad)
    assert ok == list(range(10, 10 + len(ok)))  # a prefix landed, the rest failed
    assert tier.degraded
    fs.clear()
    tier.close()
    assert_durable(tmp_path, list(range(5)) + ok, absent=range(10 + len(ok), 30), big=ok)
