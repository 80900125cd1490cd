"""RecordReader: the SSD tier's read path: one record, one record into a buffer, many at once.

Every read holds a reference on its segment (``SegmentLog.acquire``), so a
segment freed meanwhile fails the read cleanly (NotFound) instead of
returning reused bytes, and every payload's checksum is verified before it is
returned. An ``OSError`` degrades the tier; a checksum failure is counted and
raises ``StorageError`` without degrading it (one bad record, not a bad disk).
Reads take no lock during their I/O.
"""

from __future__ import annotations

import errno
import logging

from kvstore.errors import InvalidArgument, StorageError
from kvstore.ssd.compress import decompress
from kvstore.ssd.log import SegmentLog
from kvstore.ssd.record import SSDLocation
from kvstore.ssd.record_io import RecordIO, record_matches
from kvstore.ssd.record_writer import try_call
from kvstore.ssd.segment import Segment
from kvstore.ssd.tier_state import DirectIO, IOPool, TierCounters, TierHealth

log = logging.getLogger("kvstore.ssd")


class RecordReader:
    def __init__(self, log_: SegmentLog, io: RecordIO, health: TierHealth, direct: DirectIO,
                 counters: TierCounters, pool: IOPool) -> None:
        self._log = log_
        self._io = io
        self._health = health
        self._direct = direct
        self._counters = counters
        self._pool = pool

    def _acquire(self, loc: SSDLocation) -> Segment:
        self._health.check_open()
        return self._log.acquire(loc.segment)

    def _check_record(self, seg: Segment, loc: SSDLocation, head, payload) -> None:
        if not record_matches(seg, loc, head, payload):
            self._health.count_error()
            log.error("ssd: corrupt record at segment %d offset %d", loc.segment, loc.offset)
            raise StorageError(
                f"ssd: corrupt record at segment {loc.segment} offset {loc.offset}")

    def read(self, loc: SSDLocation) -> bytes:
        """The payload of the record at ``loc`` (checksums verified)."""
        seg = self._acquire(loc)
        try:
            head, stored = self._io.read_head_and_payload(
                seg, loc.offset, loc.payload_offset, loc.stored_len)
            self._check_record(seg, loc, head, stored)
            data = decompress(stored, loc.payload_len) if loc.compressed else stored
        except StorageError:
            raise
        except OSError as e:
            self._failed(loc, e)
        finally:
            self._log.release(seg)
        if len(data) != loc.payload_len:
            raise StorageError("ssd: payload length mismatch after decompression")
        self._counters.add(bytes_out=len(data))
        return data

    def read_into(self, loc: SSDLocation, out) -> None:
        """Read the payload at ``loc`` into ``out`` (writable, >= payload_len bytes).

        Zero-copy (O_DIRECT into ``out``) for large uncompressed payloads when
        ``out`` is 512-byte aligned, as a CPU arena slot is. On StorageError
        the contents of ``out`` are undefined.
        """
        dst = memoryview(out).cast("B")
        if dst.readonly or len(dst) < loc.payload_len:
            raise InvalidArgument("out must be writable and hold payload_len bytes")
        dst = dst[: loc.payload_len]
        if loc.compressed:
            dst[:] = self.read(loc)
            return
        direct = self._direct.wanted(loc.stored_len)
        seg = self._acquire(loc)
        try:
            try:
                head = self._io.read_into(seg, loc.offset, loc.payload_offset, dst, direct)
            except OSError as e:
                if not (direct and e.errno == errno.EINVAL) or isinstance(e, StorageError):
                    raise
                head = self._io.read_into(seg, loc.offset, loc.payload_offset, dst, False)
            self._check_record(seg, loc, head, dst)
        except StorageError:
            raise
        except OSError as e:
            self._failed(loc, e)
        finally:
            self._log.release(seg)
        self._counters.add(bytes_out=loc.payload_len)

    def read_many_into(self, locs: list[SSDLocation], outs: list) -> list[Exception | None]:
        """Read several payloads, on the helper threads; per location: None or its error.

        Several reads in flight keep the device busy while earlier payloads are
        checksummed (a prefix of many blocks is promoted this way).
        """
        if len(locs) != len(outs):
            raise InvalidArgument("locs and outs differ in length")

        def one(i):
            return try_call(self.read_into, locs[i], outs[i])

        if len(locs) <= 1 or self._pool.threads <= 1:
            return [one(i) for i in range(len(locs))]
        return list(self._pool.get().map(one, range(len(locs))))

    def _failed(self, loc: SSDLocation, err: OSError) -> None:
        self._health.degrade(f"read: {err}")
        raise StorageError(f"ssd: read of segment {loc.segment} failed: {err}") from err
