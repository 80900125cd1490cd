"""The SSD tier's parts alone: RecordIndex, RecordWriter and RecordReader over a SegmentLog,
and the shared state (TierHealth, DirectIO)."""

import errno

import numpy as np
import pytest

from kvstore.errors import NotFound, StorageError
from kvstore.ssd.fs import FaultyFileSystem
from kvstore.ssd.log import SegmentLog
from kvstore.ssd.record import SSDLocation, SSDRecordHeader
from kvstore.ssd.record_index import RecordIndex
from kvstore.ssd.record_io import RecordIO
from kvstore.ssd.record_reader import RecordReader
from kvstore.ssd.record_writer import RecordWriter
from kvstore.ssd.segment import Segment
from kvstore.ssd.tier_state import DirectIO, IOPool, TierCounters, TierHealth

NS = b"n" * 16
ALIGN = 4096


def header(i: int, size: int = 1000) -> SSDRecordHeader:
    return SSDRecordHeader(NS, bytes([i]) * 16, b"\0" * 16, np.arange(4, dtype=np.uint32), b"",
                           "none", size)


def test_record_index_keeps_segments_live_sets_in_step():
    index = RecordIndex()
    a, b = Segment.__new__(Segment), Segment.__new__(Segment)
    a.id, a.live, b.id, b.live = 1, set(), 2, set()
    segments = {1: a, 2: b}
    loc = SSDLocation(1, 4096, 4096, 4096, 10, 10, 0)
    index.put((NS, b"k"), loc, a, segments)
    index.put((NS, b"k"), SSDLocation(2, 4096, 4096, 4096, 10, 10, 0), b, segments)  # rewritten
    assert a.live == set() and b.live == {(NS, b"k")} and index.get((NS, b"k")).segment == 2
    index.put((NS, b"j"), loc, a, segments)
    assert index.drop_segment(a) == [(NS, b"j")] and (NS, b"j") not in index
    assert index.remove([(NS, b"k"), (NS, b"k"), (NS, b"x")], segments) == [(NS, b"k")]
    assert len(index) == 0 and index.keys() == []


@pytest.fixture
def parts(tmp_path):
    fs = FaultyFileSystem()
    log = SegmentLog(fs, str(tmp_path), 64 << 10, 16 << 10, ALIGN, direct=False)
    log.open()
    health, counters, index = TierHealth(str(tmp_path)), TierCounters(), RecordIndex()
    io, direct = RecordIO(fs, ALIGN), DirectIO(None)
    writer = RecordWriter(log, io, index, health, direct, counters, "none", ALIGN)
    reader = RecordReader(log, io, health, direct, counters, IOPool(2))
    yield fs, log, index, health, counters, writer, reader
    log.close()


def test_written_records_read_back_and_freed_segments_are_reported(parts):
    fs, log, index, health, counters, writer, reader = parts
    freed = []
    writer.callback = freed.extend
    payloads = {i: bytes([i]) * 1000 for i in range(20)}
    locs = {}
    for i, data in payloads.items():  # 64 KiB of 4 KiB records: the oldest segments go
        (locs[i],) = writer.append([writer.prepare(header(i), data)])
        writer.notify()
    assert freed and log.used <= 64 << 10 and counters.evictions == len(freed)
    live = [i for i in payloads if index.get((NS, bytes([i]) * 16)) is not None]
    assert live and all(reader.read(locs[i]) == payloads[i] for i in live)
    out = [bytearray(1000) for _ in live]
    assert reader.read_many_into([locs[i] for i in live], out) == [None] * len(live)
    assert [bytes(o) for o in out] == [payloads[i] for i in live]
    gone = next(i for i in payloads if i not in live)
    with pytest.raises(NotFound):
        reader.read(locs[gone])  # its segment was freed: a miss
    assert counters.bytes_in == 20 * 1000 and counters.bytes_out >= 2 * len(live) * 1000


def test_a_failed_write_degrades_and_a_failed_read_too(parts):
    fs, log, index, health, counters, writer, reader = parts
    (loc,) = writer.append([writer.prepare(header(1), b"a" * 1000)])
    fs.inject("pwritev", errno.ENOSPC)
    (err,) = writer.append([writer.prepare(header(2), b"b" * 1000)])
    assert isinstance(err, StorageError) and health.degraded and health.errors == 1
    assert (NS, header(2).key) not in index
    (refused,) = writer.append([writer.prepare(header(3), b"c" * 1000)])
    assert isinstance(refused, StorageError)  # degraded: refused without touching the disk
    assert reader.read(loc) == b"a" * 1000  # reads keep working
    fs.inject("pread", errno.EIO)
    with pytest.raises(StorageError):
        reader.read(loc)
    assert health.errors == 2


def test_direct_io_choice_and_refusal():
    direct = DirectIO(256 << 10)
    assert direct.wanted(1 << 20) and not direct.wanted(4096)
    direct.refuse()
    assert not direct.wanted(1 << 20)
    health = TierHealth("/nowhere")
    health.check_writable()
    health.closed = True
    with pytest.raises(StorageError):
        health.check_open()
