"""WriteBack alone, over the real SSD tier: jobs, typed events, staging, degradation."""

import errno
import threading

import numpy as np

from kvstore.ssd.fs import FaultyFileSystem
from kvstore.ssd.record import SSDRecordHeader
from kvstore.ssd.tier import SSDTier
from kvstore.store.write_back import WriteBack, WriteBackEvents

from .helpers import wait_for

NS = b"n" * 16
SIZE = 512


def header(i: int) -> SSDRecordHeader:
    key = bytes([i]) * 16
    return SSDRecordHeader(NS, key, b"\0" * 16, np.arange(4, dtype=np.uint32), b"", "none", SIZE)


class Recorder:
    """The store's side of the events: what the worker reported."""

    def __init__(self, payload=b"p" * SIZE, keep=True):
        self.payloads, self.written, self.failed, self.finished = [], [], [], []
        self.evicted = []
        self.lock = threading.Lock()
        self._payload, self._keep = payload, keep

    def events(self) -> WriteBackEvents:
        def payload(job):
            self.payloads.append(job.key)
            return self._payload

        def written(job, loc):
            self.written.append((job.key, loc))
            return self._keep

        def failed(job, lost):
            self.failed.append((job.key, lost))

        def finished(job, evicted):
            with self.lock:
                self.finished.append(job.seq)
                self.evicted.extend(evicted)

        return WriteBackEvents(payload, written, failed, finished)


def open_tier(tmp_path, fs=None, capacity=1 << 20):
    return SSDTier(tmp_path, capacity, segment_bytes=16 << 10, fs=fs or FaultyFileSystem())


def test_staged_and_payload_writes_are_reported_and_release_staging(tmp_path):
    tier, rec = open_tier(tmp_path), Recorder()
    wb = WriteBack(tier, rec.events(), threads=2, buffer_bytes=2 * SIZE)
    try:
        assert wb.can_stage(SIZE)
        s1 = wb.write(NS, header(1).key, None, header(1), staged=b"s" * SIZE)
        s2 = wb.write(NS, header(2).key, None, header(2))  # bytes asked for: events.payload
        wait_for(lambda: wb.done_up_to(s2) and len(rec.finished) == 2)
        assert s1 < s2 == wb.last_seq and wb.pending == 0 and wb.staged_bytes == 0
        assert rec.payloads == [header(2).key] and not rec.failed
        assert {k for k, _ in rec.written} == {header(1).key, header(2).key}
        loc = dict(rec.written)[header(1).key]
        assert wb.read(loc) == b"s" * SIZE and wb.stats().blocks == 2
        wb.remove(NS, header(1).key)
        wait_for(lambda: wb.done_up_to(wb.last_seq))
        assert (NS, header(1).key) not in tier and wb.removes == 1
    finally:
        wb.stop()
        tier.close()


def test_staging_is_bounded_but_one_block_always_fits(tmp_path):
    tier, rec = open_tier(tmp_path), Recorder()
    fs_gate = threading.Event()
    events = rec.events()
    slow = WriteBackEvents(lambda job: fs_gate.wait() and None, events.written, events.failed,
                           events.finished)
    wb = WriteBack(tier, slow, threads=1, buffer_bytes=SIZE + 10)
    try:
        wb.write(NS, header(9).key, None, header(9))  # holds the worker until the gate opens
        wb.write(NS, header(1).key, None, header(1), staged=b"s" * SIZE)
        assert wb.staged_bytes == SIZE and not wb.can_stage(SIZE) and wb.can_stage(10)
        fs_gate.set()
        wait_for(lambda: wb.done_up_to(wb.last_seq))
        assert wb.staged_bytes == 0 and wb.can_stage(4 * SIZE)  # one block always fits
        assert rec.failed == [(header(9).key, False)]  # no payload: the block was gone
    finally:
        wb.stop()
        tier.close()


def test_a_failing_disk_degrades_and_reports_failed_writes(tmp_path):
    fs = FaultyFileSystem()
    tier, rec = open_tier(tmp_path, fs), Recorder()
    wb = WriteBack(tier, rec.events())
    try:
        fs.inject("pwritev", errno.EIO, times=None)
        wb.write(NS, header(1).key, None, header(1), staged=b"s" * SIZE)
        wait_for(lambda: wb.done_up_to(wb.last_seq))
        assert rec.failed == [(header(1).key, True)] and not rec.written
        assert wb.degraded and not wb.usable and wb.stats().degraded and wb.stats().errors >= 1
        wb.write(NS, header(2).key, None, header(2), staged=b"s" * SIZE)
        wait_for(lambda: wb.done_up_to(wb.last_seq))
        assert rec.failed[-1] == (header(2).key, True)  # refused at once
        fs.clear()
        wb.reset_degraded()
        assert wb.usable
    finally:
        wb.stop()
        tier.close()


def test_an_unwanted_copy_is_removed_and_ssd_evictions_are_handed_over(tmp_path):
    tier, rec = open_tier(tmp_path, capacity=6 * 4096), Recorder(keep=False)
    wb = WriteBack(tier, rec.events())
    try:
        wb.write(NS, header(1).key, None, header(1), staged=b"s" * SIZE)
        wait_for(lambda: wb.done_up_to(wb.last_seq))
        assert (NS, header(1).key) not in tier  # written, then removed: the store did not want it
        rec._keep = True
        for i in range(2, 12):  # more records than the tier holds: whole segments go
            wb.write(NS, header(i).key, None, header(i), staged=b"s" * SIZE)
        wait_for(lambda: wb.done_up_to(wb.last_seq))
        assert rec.evicted and all(ns == NS for ns, _ in rec.evicted)
        assert tier.used_bytes <= 6 * 4096
    finally:
        wb.stop()
        tier.close()
