"""RecordWriter: the SSD tier's write path: prepare (compress, checksum), group, append.

Records are prepared off the append lock (``prepare``, on the tier's helper
threads for a batch), then appended in order under the tier's append lock
(``append``) to the active segment; records that follow each other go out in
one ``pwritev`` of at most ``GROUP_BYTES``. Room is made first by freeing
whole oldest segments, so the directory never exceeds its cap; the keys a
freed segment held are collected (``on_free``, the log's hook) and reported
to the eviction callback by ``notify`` once the append is done. A failed
write degrades the tier (``TierHealth``) and leaves what was durable intact.

State owned here: the next record sequence number, the keys freed during the
current append, the eviction callback.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from kvstore.errors import CapacityError, InvalidArgument, KVStoreError, StorageError
from kvstore.ssd.compress import compress
from kvstore.ssd.log import SegmentLog
from kvstore.ssd.record import (
    FLAG_LZ4,
    FLAG_TOMBSTONE,
    SSDLocation,
    SSDRecordHeader,
    pack_record_header,
    payload_offset,
    record_length,
)
from kvstore.ssd.record_index import Key, RecordIndex
from kvstore.ssd.record_io import PreparedRecord, RecordIO
from kvstore.ssd.segment import Segment
from kvstore.ssd.tier_state import DirectIO, TierCounters, TierHealth

log = logging.getLogger("kvstore.ssd")
GROUP_BYTES = 8 << 20  # at most this much per pwritev (write_many)
GROUP_RECORDS = 256  # and this many records (IOV_MAX is 1024, 3 pieces a record)

EvictionCallback = Callable[[list[Key]], None]


class RecordWriter:
    def __init__(self, log_: SegmentLog, io: RecordIO, index: RecordIndex, health: TierHealth,
                 direct: DirectIO, counters: TierCounters, compression: str, align: int) -> None:
        self._log = log_
        self._io = io
        self._index = index
        self._health = health
        self._direct = direct
        self._counters = counters
        self.compression = compression
        self.align = align
        self.seq = 0  # of the next record
        self.callback: EvictionCallback | None = None
        self._freed: list[Key] = []  # keys of segments freed during this append
        log_.on_free = self.on_free

    def prepare(self, header: SSDRecordHeader, payload) -> PreparedRecord:
        """Compress and checksum a block (no lock held)."""
        mv = memoryview(payload).cast("B")
        if len(mv) != header.payload_len:
            raise InvalidArgument(
                f"payload is {len(mv)} bytes, header says {header.payload_len}")
        packed, stored = compress(mv, self.compression)
        return PreparedRecord(
            flags=FLAG_LZ4 if packed else 0,
            namespace=header.namespace, key=header.key, parent=header.parent,
            n_tokens=len(header.tokens), codec_len=len(header.codec.encode()),
            extra_len=len(header.extra), meta=header.meta_bytes(), stored=stored,
            raw_len=len(mv),
        )

    def append(self, recs: list[PreparedRecord]) -> list[SSDLocation | Exception]:
        """Append records in order (the tier's append lock held); per record its location or error."""
        out: list[SSDLocation | Exception] = []
        group: list = []  # (rec, at, head, record_len, segment): counted, not yet written
        for rec in recs:
            record_len = record_length(len(rec.meta), len(rec.stored), self.align)
            if group and (_group_bytes(group) + record_len > GROUP_BYTES
                          or not self._log.fits_active(record_len)):
                out += self._write_group(group)
                group = []
            try:
                self._health.check_writable()
                seg = self._reserve(record_len)
            except KVStoreError as e:
                out.append(e)
                continue
            head_len = payload_offset(len(rec.meta), self.align)
            hdr = pack_record_header(
                nonce=seg.nonce, flags=rec.flags, seq=self.seq,
                namespace=rec.namespace, key=rec.key, parent=rec.parent,
                n_tokens=rec.n_tokens, codec_len=rec.codec_len,
                extra_len=rec.extra_len, stored_len=len(rec.stored),
                raw_len=rec.raw_len, record_len=record_len,
                payload_sum=rec.payload_sum, meta_sum=rec.meta_sum,
            )
            self.seq += 1
            head = b"".join((hdr, rec.meta, bytes(head_len - len(hdr) - len(rec.meta))))
            group.append((rec, seg.append_at, head, record_len, seg))
            self._log.appended(seg, seg.append_at, record_len)
        if group:
            out += self._write_group(group)
        return out

    def _write_group(self, group) -> list[SSDLocation | Exception]:
        """pwritev records already counted in the active segment; then index them."""
        seg = group[0][4]
        at = group[0][1]
        parts = [(head, rec.stored, record_len) for rec, _, head, record_len, _ in group]
        direct = all(self._direct.wanted(len(rec.stored)) for rec, *_ in group)
        try:
            try:
                self._io.write(seg, at, parts, direct)
            except OSError as e:
                if not (direct and e.errno == errno.EINVAL):
                    raise
                log.warning("ssd: O_DIRECT write refused (%s); writing buffered from now on", e)
                self._direct.refuse()
                self._io.write(seg, at, parts, False)
        except OSError as e:
            self._log.cut_back(seg, at, _group_bytes(group))
            self._health.degrade(f"write: {e}")
            err = StorageError(f"ssd: write failed: {e}")
            err.__cause__ = e
            return [err] * len(group)
        out = []
        written = 0
        for rec, rec_at, head, record_len, _ in group:
            loc = SSDLocation(seg.id, rec_at, record_len, len(head), len(rec.stored),
                              rec.raw_len, rec.flags)
            out.append(loc)
            if rec.flags & FLAG_TOMBSTONE:
                continue
            self._index.put((rec.namespace, rec.key), loc, seg, self._log.segments)
            written += rec.raw_len
        self._counters.add(bytes_in=written)
        return out

    def _reserve(self, nbytes: int) -> Segment:
        try:
            return self._log.reserve(nbytes)
        except CapacityError:
            raise
        except OSError as e:
            self._health.degrade(f"making room: {e}")
            raise StorageError(f"ssd: cannot make room: {e}") from e

    def on_free(self, seg: Segment) -> None:
        """A segment is being freed: its live records leave the index (reported by ``notify``)."""
        keys = self._index.drop_segment(seg)
        self._counters.add(evictions=len(keys))
        self._freed.extend(keys)

    def forget_freed(self) -> list[Key]:
        """Take the keys freed so far without reporting them (recovery: the store has not seen them)."""
        keys, self._freed = self._freed, []
        return keys

    def notify(self) -> None:
        """Report the keys freed since the last call to the eviction callback."""
        keys = self.forget_freed()
        cb = self.callback
        if not keys or cb is None:
            return
        try:
            cb(keys)
        except Exception:  # a failing callback must not fail the write
            log.exception("ssd: eviction callback failed")


def _group_bytes(group) -> int:
    return group[-1][1] + group[-1][3] - group[0][1]


def try_call(fn, *args):
    """``fn(*args)``, or the store/OS error it raised (per-item results of batches)."""
    try:
        return fn(*args)
    except (KVStoreError, OSError) as e:
        return e
