"""The SSD tier's write path: prepare (compress, checksum), group and append records.

A mixin of ``SSDTier`` (kept apart so each file holds one concept). Records are
prepared on helper threads, then appended under the tier's append lock to the
active segment; records that follow each other go out in one ``pwritev`` of at
most GROUP_BYTES. ``_reserve`` frees whole oldest segments first so the
directory never exceeds its cap, reporting the freed keys to the eviction
callback. A failed write degrades the tier and leaves what was durable intact.
"""

from __future__ import annotations

import errno
import logging

from kvstore.errors import CapacityError, InvalidArgument, KVStoreError, StorageError
from kvstore.ssd.compress import compress
from kvstore.ssd.record import (
    FLAG_LZ4,
    FLAG_TOMBSTONE,
    SSDLocation,
    SSDRecordHeader,
    pack_record_header,
    payload_offset,
    record_length,
)
from kvstore.ssd.record_io import PreparedRecord
from kvstore.ssd.segment import Segment

log = logging.getLogger("kvstore.ssd")
GROUP_BYTES = 8 << 20  # at most this much per pwritev (write_many)
GROUP_RECORDS = 256  # and this many records (IOV_MAX is 1024, 3 pieces a record)


class SSDWrites:
    def write(self, header: SSDRecordHeader, payload) -> SSDLocation:
        """Append a record; returns where it is. Raises StorageError, CapacityError."""
        (result,) = self._append([self._prepare(header, payload)])
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(self, items) -> list[SSDLocation | Exception]:
        """Write ``(header, payload)`` pairs; per item its location or its error.

        Compression and checksums run on helper threads, several at a time;
        records that follow each other in a segment go out together, up to
        ``GROUP_BYTES`` per ``pwritev`` (fewer, larger I/Os: the device queues
        the pieces of one large O_DIRECT write in parallel).
        """
        items = list(items)
        if len(items) <= 1 or self.io_threads <= 1:
            prepared = [_try(self._prepare, h, p) for h, p in items]
        else:
            prepared = list(self._io_pool().map(lambda hp: _try(self._prepare, *hp), items))
        out: list[SSDLocation | Exception] = list(prepared)
        good = [i for i, r in enumerate(prepared) if isinstance(r, PreparedRecord)]
        for start in range(0, len(good), GROUP_RECORDS):
            chunk = good[start : start + GROUP_RECORDS]
            for i, r in zip(chunk, self._append([prepared[i] for i in chunk])):
                out[i] = r
        return out

    def _prepare(self, header: SSDRecordHeader, payload) -> PreparedRecord:
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

    def _append(self, recs: list[PreparedRecord]) -> list[SSDLocation | Exception]:
        """Append records in order; per record its location or its error."""
        out: list[SSDLocation | Exception] = []
        with self._lock:
            try:
                self._check_writable()
                self._ensure_recovered()
            except KVStoreError as e:
                self._notify()
                return [e] * len(recs)
            group: list = []  # (rec, at, head, record_len, segment): counted, not yet written
            try:
                for rec in recs:
                    record_len = record_length(len(rec.meta), len(rec.stored), self.align)
                    if group and (self._group_bytes(group) + record_len > GROUP_BYTES
                                  or not self._log.fits_active(record_len)):
                        out += self._write_group(group)
                        group = []
                    try:
                        self._check_writable()
                        seg = self._reserve(record_len)
                    except KVStoreError as e:
                        out.append(e)
                        continue
                    head_len = payload_offset(len(rec.meta), self.align)
                    hdr = pack_record_header(
                        nonce=seg.nonce, flags=rec.flags, seq=self._seq,
                        namespace=rec.namespace, key=rec.key, parent=rec.parent,
                        n_tokens=rec.n_tokens, codec_len=rec.codec_len,
                        extra_len=rec.extra_len, stored_len=len(rec.stored),
                        raw_len=rec.raw_len, record_len=record_len,
                        payload_sum=rec.payload_sum, meta_sum=rec.meta_sum,
                    )
                    self._seq += 1
                    head = b"".join((hdr, rec.meta, bytes(head_len - len(hdr) - len(rec.meta))))
                    group.append((rec, seg.append_at, head, record_len, seg))
                    self._log.appended(seg, seg.append_at, record_len)
                if group:
                    out += self._write_group(group)
            finally:
                self._notify()
        return out

    @staticmethod
    def _group_bytes(group) -> int:
        return group[-1][1] + group[-1][3] - group[0][1]

    def _write_group(self, group) -> list[SSDLocation | Exception]:
        """pwritev records already counted in the active segment; then index them."""
        seg = group[0][4]
        at = group[0][1]
        parts = [(head, rec.stored, record_len) for rec, _, head, record_len, _ in group]
        direct = self._direct_min is not None and all(
            len(rec.stored) >= self._direct_min for rec, *_ in group)
        try:
            try:
                self._io.write(seg, at, parts, direct)
            except OSError as e:
                if not (direct and e.errno == errno.EINVAL):
                    raise
                log.warning("ssd: O_DIRECT write refused (%s); writing buffered from now on", e)
                self._direct_min = None
                self._io.write(seg, at, parts, False)
        except OSError as e:
            self._log.cut_back(seg, at, self._group_bytes(group))
            self._degrade(f"write: {e}")
            err = StorageError(f"ssd: write failed: {e}")
            err.__cause__ = e
            return [err] * len(group)
        out = []
        with self._meta:
            for rec, rec_at, head, record_len, _ in group:
                loc = SSDLocation(seg.id, rec_at, record_len, len(head), len(rec.stored),
                                  rec.raw_len, rec.flags)
                out.append(loc)
                if rec.flags & FLAG_TOMBSTONE:
                    continue
                k = (rec.namespace, rec.key)
                old = self._index.get(k)
                if old is not None and old.segment in self._log.segments:
                    self._log.segments[old.segment].live.discard(k)
                self._index[k] = loc
                seg.live.add(k)
                self._bytes_in += rec.raw_len
        return out

    def _reserve(self, nbytes: int) -> Segment:
        try:
            return self._log.reserve(nbytes)
        except CapacityError:
            raise
        except OSError as e:
            self._degrade(f"making room: {e}")
            raise StorageError(f"ssd: cannot make room: {e}") from e

    def _on_free(self, seg: Segment) -> None:
        """A segment is being freed: its live records leave the index."""
        with self._meta:
            keys = [k for k in seg.live
                    if k in self._index and self._index[k].segment == seg.id]
            for k in keys:
                del self._index[k]
            seg.live = set()
            self._evictions += len(keys)
        self._freed.extend(keys)

    def _notify(self) -> None:
        keys, self._freed = self._freed, []
        cb = self._callback
        if not keys or cb is None:
            return
        try:
            cb(keys)
        except Exception:  # a failing callback must not fail the write
            log.exception("ssd: eviction callback failed")


def _try(fn, *args):
    """``fn(*args)``, or the store/OS error it raised (per-item results of write_many)."""
    try:
        return fn(*args)
    except (KVStoreError, OSError) as e:
        return e

