"""One segment file of the SSD tier: create, open, and scan its records.

The format is in ``kvstore.ssd.record``. A ``Segment`` is the tier's
in-memory handle: the open file descriptor, where the next record goes, the
live keys it holds (for the eviction callback), a reader count (a segment is
closed and unlinked only when no read is using it) and write/sync sequence
numbers (what ``flush`` still has to fsync).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import xxhash

from kvstore.ssd.fs import SSDFileSystem
from kvstore.ssd.record import (
    FLAG_TOMBSTONE,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordFields,
    SegmentHeader,
    SSDLocation,
    pack_segment_header,
    payload_offset,
    unpack_record_header,
    unpack_segment_header,
)

log = logging.getLogger("kvstore.ssd")

_NAME = re.compile(r"^seg-([0-9a-f]{16})\.kvs$")
_SCAN_CHUNK = 1 << 20


def segment_name(segment_id: int) -> str:
    return f"seg-{segment_id:016x}.kvs"


def parse_segment_name(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1), 16) if m else None


@dataclass(eq=False)
class Segment:
    id: int
    path: str
    fd: int  # buffered: headers, small records, scans, fsync, truncate
    nonce: int
    align: int
    size: int  # bytes the file occupies (what the capacity counts)
    append_at: int  # where the next record goes
    sealed: bool = False  # no more appends (a recovered segment is sealed)
    dying: bool = False  # being freed: no new reads
    refs: int = 0  # reads (and flushes) in progress
    live: set = field(default_factory=set)  # (namespace, key) whose newest record is here
    written: int = 0  # write counter, bumped by every append
    synced: int = 0  # value of ``written`` covered by the last completed fsync
    dfd: int | None = None  # the same file opened with O_DIRECT (large payloads), if any


def open_direct(fs: SSDFileSystem, seg: Segment) -> bool:
    """Open ``seg.dfd`` with O_DIRECT; False when the filesystem refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        seg.dfd = fs.open(seg.path, os.O_RDWR | flag)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


def close_segment(fs: SSDFileSystem, seg: Segment) -> None:
    for fd in (seg.fd, seg.dfd):
        if fd is not None:
            try:
                fs.close(fd)
            except OSError:
                pass
    seg.dfd = None


def create_segment(fs: SSDFileSystem, directory: str, segment_id: int, align: int) -> Segment:
    """Create and write the header of a new segment (not fsynced: flush does that)."""
    path = os.path.join(directory, segment_name(segment_id))
    header = SegmentHeader(segment_id, secrets.randbits(64), align, time.time_ns())
    fd = fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        fs.pwritev_all(fd, [pack_segment_header(header)], 0)
    except BaseException:
        try:
            fs.close(fd)
        finally:
            fs.unlink(path)
        raise
    return Segment(segment_id, path, fd, header.nonce, align, SEGMENT_HEADER_SIZE,
                   SEGMENT_HEADER_SIZE, written=1)


def open_segment(fs: SSDFileSystem, path: str, segment_id: int) -> Segment | None:
    """Open an existing segment read-only-in-spirit (sealed); ``None`` if its header is bad."""
    fd = fs.open(path, os.O_RDWR)
    try:
        size = fs.size(fd)
        header = unpack_segment_header(fs.pread(fd, SEGMENT_HEADER_SIZE, 0))
    except BaseException:
        fs.close(fd)
        raise
    if header is None or header.segment_id != segment_id:
        fs.close(fd)
        return None
    return Segment(segment_id, path, fd, header.nonce, header.align, size, size, sealed=True)


@dataclass
class ScannedRecord:
    fields: RecordFields
    location: SSDLocation
    meta: bytes
    payload: bytes | None  # stored bytes (read when verifying or for tombstones)


def _find_next_header(fs, seg: Segment, start: int, end: int) -> int | None:
    """First aligned offset >= ``start`` holding a record header that verifies."""
    pos = start
    while pos + RECORD_HEADER_SIZE <= end:
        chunk = fs.pread(seg.fd, min(_SCAN_CHUNK, end - pos), pos)
        if not chunk:
            return None
        for off in range(0, len(chunk) - RECORD_HEADER_SIZE + 1, seg.align):
            if chunk[off : off + 4] == b"KVRC" and unpack_record_header(
                chunk[off : off + RECORD_HEADER_SIZE], seg.nonce, seg.align
            ):
                return pos + off
        pos += max(seg.align, len(chunk) // seg.align * seg.align)
    return None


def scan_segment(fs: SSDFileSystem, seg: Segment, verify: bool = True) -> Iterator[ScannedRecord]:
    """Yield the segment's valid records in write order.

    A record whose header verifies but whose body checksum does not is
    skipped (logged); a header that does not verify is resynchronised past
    (the next aligned header that verifies); a record that runs past the end
    of the file (torn tail) ends the scan. The meta (tokens, codec, extra) is
    always verified; with ``verify=False`` payload bytes are not read (they are
    checked on read instead), except a tombstone's, which are always checked.
    """
    end = seg.size
    pos = SEGMENT_HEADER_SIZE
    while pos + RECORD_HEADER_SIZE <= end:
        head = fs.pread(seg.fd, RECORD_HEADER_SIZE, pos)
        f = unpack_record_header(head, seg.nonce, seg.align)
        if f is None:
            if head.count(0) != len(head):
                log.warning("ssd: bad record header in %s at %d; resyncing", seg.path, pos)
            nxt = _find_next_header(fs, seg, pos + seg.align, end)
            if nxt is None:
                return
            if head.count(0) != len(head):
                log.warning("ssd: %s: skipped %d bytes to %d", seg.path, nxt - pos, nxt)
            pos = nxt
            continue
        if pos + f.record_len > end:
            log.warning("ssd: torn record at the end of %s (offset %d)", seg.path, pos)
            return
        meta = fs.pread(seg.fd, f.meta_len, pos + RECORD_HEADER_SIZE) if f.meta_len else b""
        if len(meta) != f.meta_len or xxhash.xxh3_64_intdigest(meta) != f.meta_sum:
            log.warning("ssd: corrupt record meta in %s at %d dropped", seg.path, pos)
            pos += f.record_len
            continue
        payload = None
        if verify or f.flags & FLAG_TOMBSTONE:
            payload_at = pos + payload_offset(f.meta_len, seg.align)
            payload = fs.pread(seg.fd, f.stored_len, payload_at) if f.stored_len else b""
            if len(payload) != f.stored_len or xxhash.xxh3_64_intdigest(payload) != f.payload_sum:
                log.warning("ssd: corrupt record payload in %s at %d dropped", seg.path, pos)
                pos += f.record_len
                continue
        loc = SSDLocation(seg.id, pos, f.record_len, payload_offset(f.meta_len, seg.align),
                          f.stored_len, f.raw_len, f.flags)
        yield ScannedRecord(f, loc, meta, payload)
        pos += f.record_len
