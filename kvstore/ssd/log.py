"""The SSD tier's log of segment files: which exist, which takes appends, what they occupy.

``SegmentLog`` owns the segment table (oldest first), the active segment,
the byte count the capacity cap is checked against (segment file sizes plus
the manifest), the reader counts that keep a segment's file alive while a
read uses it, and what ``flush`` still has to fsync. It knows nothing of keys:
before it frees a segment it calls ``on_free(segment)`` so the tier can drop
the segment's records from its index. Calls that change the table run under
the tier's append lock; ``lock`` (short holds) guards the table against
readers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from kvstore.errors import CapacityError, NotFound, StorageError
from kvstore.ssd.fs import SSDFileSystem
from kvstore.ssd.manifest import MANIFEST_TMP, read_manifest
from kvstore.ssd.record import SEGMENT_HEADER_SIZE
from kvstore.ssd.segment import (
    Segment,
    close_segment,
    create_segment,
    open_direct,
    open_segment,
    parse_segment_name,
    segment_name,
)

log = logging.getLogger("kvstore.ssd")


class SegmentLog:
    def __init__(self, fs: SSDFileSystem, directory: str, capacity: int, segment_bytes: int,
                 align: int, direct: bool) -> None:
        self.fs = fs
        self.directory = directory
        self.capacity = capacity
        self.segment_bytes = segment_bytes
        self.align = align
        self.direct = direct  # open an O_DIRECT descriptor beside each segment's
        self.lock = threading.Lock()
        self._readers_done = threading.Condition(self.lock)
        self.segments: dict[int, Segment] = {}  # ascending id = oldest first
        self.active: Segment | None = None
        self.used = 0
        self.manifest_bytes = 0
        self.next_id = 1
        self._dir_changes = 0
        self._dir_synced = 0
        self.on_free: Callable[[Segment], None] = lambda seg: None
        self.closed = False

    # ------------------------------------------------------------------ open

    def open(self) -> None:
        """List the directory: open every segment whose header verifies, delete the rest."""
        fs = self.fs
        try:
            fs.makedirs(self.directory)
            names = fs.listdir(self.directory)
            if MANIFEST_TMP in names:
                fs.unlink(os.path.join(self.directory, MANIFEST_TMP))
            ids = sorted(i for i in map(parse_segment_name, names) if i is not None)
            for seg_id in ids:
                path = os.path.join(self.directory, segment_name(seg_id))
                seg = open_segment(fs, path, seg_id)
                if seg is None:
                    log.error("ssd: segment %s has no valid header; deleted", path)
                    fs.unlink(path)
                    self._dir_changes += 1
                    continue
                self.segments[seg_id] = seg
                self.used += seg.size
                if self.direct and not open_direct(fs, seg):
                    self.direct = False
            if ids:
                self.next_id = ids[-1] + 1
            data = read_manifest(fs, self.directory)
            self.manifest_bytes = len(data) if data is not None else 0
            self.used += self.manifest_bytes
        except OSError as e:
            self.close()
            raise StorageError(f"ssd: cannot open {self.directory}: {e}") from e

    # ---------------------------------------------------------------- append

    def reserve(self, record_len: int) -> Segment:
        """The segment to append ``record_len`` bytes to, freeing oldest segments as needed.

        Raises CapacityError when the record cannot fit at all, OSError when a
        new segment cannot be created.
        """
        if record_len + SEGMENT_HEADER_SIZE + self.manifest_bytes > self.capacity:
            raise CapacityError(
                f"ssd: a record of {record_len} bytes cannot fit in {self.capacity} bytes")
        seg = self.active
        if seg is not None and (seg.sealed or (
                seg.append_at > SEGMENT_HEADER_SIZE
                and seg.append_at + record_len > self.segment_bytes)):
            self.seal_active()
        while True:
            need = record_len + (SEGMENT_HEADER_SIZE if self.active is None else 0)
            if self.used + need <= self.capacity:
                break
            if not self.segments:
                raise CapacityError("ssd: no room left (a freed segment could not be unlinked)")
            self.free(self.oldest())
        if self.active is None:
            self.active = self._new_segment()
        return self.active

    def fits_active(self, record_len: int) -> bool:
        """Whether ``reserve(record_len)`` would return the active segment untouched."""
        seg = self.active
        return (seg is not None and not seg.sealed
                and (seg.append_at == SEGMENT_HEADER_SIZE
                     or seg.append_at + record_len <= self.segment_bytes)
                and self.used + record_len <= self.capacity)

    def make_room(self, nbytes: int) -> None:
        """Free oldest segments until ``nbytes`` more fit (for the manifest)."""
        while self.used + nbytes > self.capacity and self.segments:
            self.free(self.oldest())
        if self.used + nbytes > self.capacity:
            raise CapacityError("ssd: no room left")

    def _new_segment(self) -> Segment:
        seg_id = self.next_id
        self.next_id += 1
        seg = create_segment(self.fs, self.directory, seg_id, self.align)
        try:
            if self.direct and not open_direct(self.fs, seg):
                log.info("ssd: %s refuses O_DIRECT; all I/O is buffered", self.directory)
                self.direct = False
        except OSError:
            close_segment(self.fs, seg)
            self.fs.unlink(seg.path)
            raise
        with self.lock:
            self.segments[seg_id] = seg
            self.used += seg.size
            self._dir_changes += 1
        return seg

    def appended(self, seg: Segment, at: int, record_len: int) -> None:
        with self.lock:
            seg.append_at = at + record_len
            self.used += seg.append_at - seg.size
            seg.size = seg.append_at
            seg.written += 1

    def cut_back(self, seg: Segment, at: int, nbytes: int) -> None:
        """After a failed append of ``nbytes`` at ``at`` (already counted by ``appended``
        or not): truncate the partial bytes away and seal the segment."""
        if self.active is seg:
            self.seal_active()
        seg.sealed = True
        try:
            self.fs.truncate(seg.fd, at)
            size = at
        except OSError:
            size = max(seg.size, at + nbytes)  # at most this much may have landed
        with self.lock:
            self.used += size - seg.size
            seg.size = size
            seg.append_at = size

    def seal_active(self) -> None:
        if self.active is not None:
            self.active.sealed = True
            self.active = None

    def set_manifest_bytes(self, n: int) -> None:
        with self.lock:
            self.used += n - self.manifest_bytes
            self.manifest_bytes = n

    # ------------------------------------------------------------------ free

    def oldest(self) -> Segment:
        return next(iter(self.segments.values()))

    def free(self, seg: Segment) -> None:
        """Drop a whole segment: ``on_free``, wait for its readers, close, unlink.

        Raises OSError when the file cannot be unlinked (it is then still counted).
        """
        with self.lock:
            seg.dying = True
            self.segments.pop(seg.id, None)
        self.on_free(seg)
        with self.lock:
            self._readers_done.wait_for(lambda: seg.refs == 0)
        if self.active is seg:
            self.active = None
        close_segment(self.fs, seg)
        try:
            self.fs.unlink(seg.path)
        except FileNotFoundError:
            pass
        with self.lock:
            self.used -= seg.size
            self._dir_changes += 1

    # ---------------------------------------------------------------- readers

    def acquire(self, segment_id: int) -> Segment:
        """Pin a segment for a read; NotFound once it is being freed."""
        with self.lock:
            if self.closed:
                raise StorageError("ssd: tier is closed")
            seg = self.segments.get(segment_id)
            if seg is None or seg.dying:
                raise NotFound(f"ssd: segment {segment_id} was freed")
            seg.refs += 1
            return seg

    def release(self, seg: Segment) -> None:
        with self.lock:
            seg.refs -= 1
            if seg.refs == 0:
                self._readers_done.notify_all()

    # ------------------------------------------------------------------ sync

    def sync(self) -> None:
        """fsync every segment written since its last sync, and the directory if it changed.

        Call without the append lock held: appends go on meanwhile (they are
        not covered). Two concurrent syncs both wait for their own fsyncs.
        """
        with self.lock:
            if self.closed:
                return
            targets = [(s, s.written) for s in self.segments.values() if s.written > s.synced]
            for s, _ in targets:
                s.refs += 1
            dir_target = self._dir_changes if self._dir_changes > self._dir_synced else 0
        try:
            for seg, written in targets:
                self.fs.fsync(seg.fd)
                with self.lock:
                    seg.synced = max(seg.synced, written)
            if dir_target:
                self.fs.fsync_dir(self.directory)
                with self.lock:
                    self._dir_synced = max(self._dir_synced, dir_target)
        finally:
            for seg, _ in targets:
                self.release(seg)

    def sizes(self) -> dict[int, int]:
        with self.lock:
            return {s.id: s.size for s in self.segments.values()}

    def close(self) -> None:
        """Close every descriptor once no read uses it."""
        with self.lock:
            self.closed = True
            self._readers_done.wait_for(
                lambda: all(s.refs == 0 for s in self.segments.values()))
            segs = list(self.segments.values())
        for seg in segs:
            close_segment(self.fs, seg)
        self.active = None
