"""SSDTier: round trips, segments, read_into, remove + recover, manifest, threads."""

from __future__ import annotations

import errno
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from kvstore.errors import CapacityError, InvalidArgument, NotFound, StorageError
from kvstore.keys import ROOT_KEY
from kvstore.ssd.fs import SSDFileSystem
from kvstore.ssd.record import SSDRecordHeader
from kvstore.ssd.tier import SSDTier

_spec = importlib.util.spec_from_file_location(
    "ssd_workload", Path(__file__).with_name("ssd_workload.py"))
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


def open_tier(path, cap=64 << 20, seg=256 << 10, **kw) -> SSDTier:
    return SSDTier(path, capacity_bytes=cap, segment_bytes=seg, **kw)


def write_n(tier, n, start=0):
    locs = {}
    for i in range(start, start + n):
        header, payload = W.record(i)
        locs[i] = tier.write(header, payload)
    return locs


def test_round_trip_many_records_several_segments(tmp_path):
    tier = open_tier(tmp_path)
    assert tier.recover() == []
    locs = write_n(tier, 120)
    assert len(tier.segment_sizes()) >= 3
    for i, loc in locs.items():
        assert tier.read(loc) == W.payload_of(i)
    assert len(tier) == 120
    assert tier.stats().blocks == 120
    assert tier.used_bytes == sum(os.path.getsize(p) for p in tmp_path.iterdir())
    tier.close()


def test_read_into_caller_buffer(tmp_path):
    tier = open_tier(tmp_path)
    locs = write_n(tier, 12)
    for i, loc in locs.items():
        expected = W.payload_of(i)
        buf = bytearray(len(expected) + 10)
        tier.read_into(loc, memoryview(buf))
        assert bytes(buf[: len(expected)]) == expected
        arr = np.empty(len(expected), np.uint8)  # any writable buffer, e.g. an arena slot
        tier.read_into(loc, arr)
        assert arr.tobytes() == expected
    with pytest.raises(InvalidArgument):
        tier.read_into(locs[0], bytearray(1))
    tier.close()


def test_compression_modes(tmp_path):
    dense = np.random.default_rng(1).bytes(64 << 10)  # incompressible, and the same each run
    padded = dense[: 16 << 10] + bytes(48 << 10)
    for mode, packs_padded in (("auto", True), ("lz4", True), ("none", False)):
        tier = open_tier(tmp_path / mode, compression=mode)
        h = SSDRecordHeader(W.NAMESPACES[0], W.key_of(1), ROOT_KEY, [1, 2], b"", "none",
                            len(padded))
        loc = tier.write(h, padded)
        assert loc.compressed == packs_padded
        assert loc.stored_len < len(padded) or not packs_padded
        assert tier.read(loc) == padded
        buf = bytearray(len(padded))
        tier.read_into(loc, buf)
        assert buf == padded
        h2 = SSDRecordHeader(W.NAMESPACES[0], W.key_of(2), ROOT_KEY, [3], b"", "none", len(dense))
        loc2 = tier.write(h2, dense)
        assert not loc2.compressed  # random bytes never pay
        assert tier.read(loc2) == dense
        tier.close()


def test_recover_returns_headers_and_locations(tmp_path):
    tier = open_tier(tmp_path)
    locs = write_n(tier, 40)
    tier.close()
    tier = open_tier(tmp_path)
    found = tier.recover()
    assert len(found) == 40
    by_key = W.index_of_key(40)
    for header, loc in found:
        i = by_key[header.key]
        assert header == W.header_of(i, len(W.payload_of(i)))
        assert loc == locs[i]
        assert tier.read(loc) == W.payload_of(i)
    tier.close()


def test_recover_orders_parents_before_children(tmp_path):
    tier = open_tier(tmp_path)
    order = [3, 2, 1, 0, 7, 5, 4, 6]  # children first, as CPU-tier demotion writes them
    for i in order:
        tier.write(*W.record(i))
    tier.close()
    tier = open_tier(tmp_path)
    seen = set()
    for header, _ in tier.recover():
        assert header.parent == ROOT_KEY or (header.namespace, header.parent) in seen
        seen.add((header.namespace, header.key))
    assert len(seen) == len(order)
    tier.close()


def test_remove_survives_recover(tmp_path):
    tier = open_tier(tmp_path)
    locs = write_n(tier, 30)
    tier.remove(W.namespace_of(4), W.key_of(4))
    assert tier.remove_many([(W.namespace_of(i), W.key_of(i)) for i in (5, 6, 6, 999)]) == 2
    tier.remove(W.namespace_of(4), W.key_of(4))  # already gone: no-op
    assert (W.namespace_of(4), W.key_of(4)) not in tier
    assert tier.read(locs[4]) == W.payload_of(4)  # bytes stay until the segment is freed
    tier.write(*W.record(6))  # written again after its removal: live again
    tier.close()
    tier = open_tier(tmp_path)
    keys = {h.key for h, _ in tier.recover()}
    assert W.key_of(4) not in keys and W.key_of(5) not in keys
    assert W.key_of(6) in keys and len(keys) == 28
    tier.close()


def test_overwrite_keeps_newest(tmp_path):
    tier = open_tier(tmp_path)
    h, p = W.record(1)
    tier.write(h, p)
    loc2 = tier.write(h, p)
    assert tier.location(h.namespace, h.key) == loc2
    tier.close()
    tier = open_tier(tmp_path)
    assert [loc for _, loc in tier.recover()] == [loc2]
    tier.close()


def test_writes_go_to_a_new_segment_after_reopen(tmp_path):
    tier = open_tier(tmp_path)
    write_n(tier, 3)
    tier.close()
    tier = open_tier(tmp_path)
    tier.recover()
    loc = tier.write(*W.record(10))
    assert loc.segment == 2
    tier.close()


def test_manifest_round_trip(tmp_path):
    from kvstore.layout import KVLayout
    from kvstore.namespace_spec import NamespaceSpec

    spec = NamespaceSpec(KVLayout("m", 2, 2, 8, "float16", 16), tenant="t")
    tier = open_tier(tmp_path)
    assert tier.load_namespaces() == {}
    tier.save_namespaces({spec.fingerprint: spec.to_dict()})
    tier.save_namespaces({spec.fingerprint: spec.to_dict(), b"x" * 16: {"a": 1}})
    tier.close()
    tier = open_tier(tmp_path)
    loaded = tier.load_namespaces()
    assert NamespaceSpec.from_dict(loaded[spec.fingerprint]) == spec
    assert loaded[b"x" * 16] == {"a": 1}
    assert tier.used_bytes == sum(os.path.getsize(p) for p in tmp_path.iterdir())
    tier.close()
    # a damaged manifest reads as empty (logged), never as wrong namespaces
    path = tmp_path / "namespaces.json"
    path.write_text(path.read_text().replace('"t"', '"u"'))
    tier = open_tier(tmp_path)
    assert tier.load_namespaces() == {}
    tier.close()


def test_read_of_freed_segment_is_not_found(tmp_path):
    tier = open_tier(tmp_path, cap=128 << 10, seg=32 << 10)
    first = tier.write(*W.record(0, 8 << 10))
    for i in range(1, 60):
        tier.write(*W.record(i, 8 << 10))
    assert first.segment not in tier.segment_sizes()
    with pytest.raises(NotFound):
        tier.read(first)
    tier.close()


def test_record_larger_than_capacity(tmp_path):
    tier = open_tier(tmp_path, cap=64 << 10)
    h = SSDRecordHeader(W.NAMESPACES[0], W.key_of(1), ROOT_KEY, [1], b"", "none", 100 << 10)
    with pytest.raises(CapacityError):
        tier.write(h, np.random.default_rng(2).bytes(100 << 10))
    with pytest.raises(InvalidArgument):
        tier.write(h, b"short")
    tier.close()


def test_closed_tier_refuses(tmp_path):
    tier = open_tier(tmp_path)
    loc = tier.write(*W.record(0))
    tier.close()
    tier.close()
    with pytest.raises(StorageError):
        tier.read(loc)
    with pytest.raises(StorageError):
        tier.write(*W.record(1))


def test_concurrent_writers_readers_and_eviction(tmp_path):
    tier = open_tier(tmp_path, cap=512 << 10, seg=64 << 10)
    evicted = []
    tier.set_eviction_callback(evicted.extend)
    locs: dict[int, object] = {}
    errors = []
    lock = threading.Lock()

    def writer(base):
        for i in range(base, base + 150):
            loc = tier.write(*W.record(i, 8 << 10))
            with lock:
                locs[i] = loc

    def reader():
        for _ in range(600):
            with lock:
                items = list(locs.items())[-20:]
            for i, loc in items:
                try:
                    assert tier.read(loc) == W.payload_of(i, 8 << 10)
                except NotFound:
                    pass  # its segment was freed: a miss, never garbage
                except Exception as e:  # pragma: no cover - reported below
                    errors.append(e)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 10_000)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert tier.used_bytes <= 512 << 10
    live = set(tier.keys())
    assert live.isdisjoint(evicted)
    assert len(live) + len(evicted) == 300
    tier.close()


def _aligned(n: int) -> np.ndarray:
    import mmap

    return np.frombuffer(mmap.mmap(-1, max(n, 1)), np.uint8)[:n]


@pytest.mark.parametrize("size", [1, 511, 512, 4096, 70_001, 300_000])
def test_direct_io_round_trip(tmp_path, size):
    """O_DIRECT for every record: aligned and unaligned sources and destinations."""
    tier = open_tier(tmp_path, compression="none", direct_io=True)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    src = _aligned(size)
    src[:] = data
    h = SSDRecordHeader(W.NAMESPACES[0], W.key_of(size), ROOT_KEY, [1, 2, 3], b"e", "none", size)
    locs = [tier.write(h, src), tier.write(h, data.tobytes())]  # aligned, then not
    for loc in locs:
        assert loc.payload_offset % 4096 == 0 and loc.offset % 4096 == 0
        assert tier.read(loc) == data.tobytes()
        out = _aligned(size)
        tier.read_into(loc, out)  # O_DIRECT straight into the buffer
        assert out.tobytes() == data.tobytes()
        odd = bytearray(size + 1)
        tier.read_into(loc, memoryview(odd)[1:])  # unaligned: through the bounce buffer
        assert bytes(odd[1:]) == data.tobytes()
    tier.close()
    tier = open_tier(tmp_path)
    assert [loc for _, loc in tier.recover()] == locs[1:]
    tier.close()


class NoDirectFS(SSDFileSystem):
    """A filesystem that refuses O_DIRECT, as tmpfs does."""

    def open(self, path, flags, mode=0o644):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return super().open(path, flags, mode)


def test_direct_io_refused_falls_back_to_buffered(tmp_path):
    tier = open_tier(tmp_path, fs=NoDirectFS(), direct_io=True, compression="none")
    payload = np.random.default_rng(3).bytes(300_000)
    h = SSDRecordHeader(W.NAMESPACES[0], W.key_of(1), ROOT_KEY, [1], b"", "none", len(payload))
    loc = tier.write(h, payload)
    out = _aligned(len(payload))
    tier.read_into(loc, out)
    assert out.tobytes() == payload
    tier.close()


def test_write_many_and_read_many_into(tmp_path):
    tier = open_tier(tmp_path, cap=8 << 20, seg=1 << 20)
    items = [W.record(i, 300_000) for i in range(20)]
    bad = (W.header_of(99, 5), b"123")  # payload length disagrees with its header
    locs = tier.write_many(items[:10] + [bad] + items[10:])
    assert isinstance(locs[10], InvalidArgument)
    locs = locs[:10] + locs[11:]
    outs = [_aligned(h.payload_len) for h, _ in items]
    assert tier.read_many_into(locs, outs) == [None] * 20
    for (_, payload), out in zip(items, outs):
        assert out.tobytes() == payload
    outs[3] = bytearray(1)  # too small: that one fails alone
    errors = tier.read_many_into(locs, outs)
    assert isinstance(errors[3], InvalidArgument) and errors.count(None) == 19
    tier.close()
