"""SSDTier: the log-structured SSD tier of the store (below the CPU arena).

Blocks are appended as checksummed records (format: ``kvstore.ssd_record``)
to the active segment file of a directory; a segment is sealed when the next
record would take it past ``segment_bytes`` and a new one is started. The
tier keeps an in-memory index ``(namespace, key) -> SSDLocation`` of the live
records; the store keeps the locations it was given and reads by location.

Capacity: ``used_bytes`` is the sum of the segment files' sizes (headers,
records and padding; records are 4 KiB aligned, so sizes are disk usage) plus
the namespace manifest. A write never takes it past ``capacity_bytes``: it
first frees whole segments, oldest first (the active one too, if needed), and
reports the live keys of each freed segment through the eviction callback.
Other files in the directory are neither counted nor touched.

Durability: records are written with buffered ``pwritev`` (one call a record:
header, meta, payload, padding); ``flush()`` fsyncs every segment written to
since the last flush and, when segments were created or unlinked, the
directory. What was written before ``flush()`` was called survives SIGKILL and
power loss; later writes may or may not. ``remove`` writes a tombstone record,
durable at the next flush like any record.

Recovery: opening a tier lists its segments (a segment whose header does not
verify is deleted, logged) and ``recover()`` scans them in id order: torn or
corrupt records are dropped (logged), tombstones delete what came before
them, and the live records come back in write order, each after its parent
when the parent is live too, so the store can rebuild its radix trees. New
writes always go to a new segment, never after a possibly torn tail.

Reads: ``read``/``read_into`` verify the record header (nonce-seeded checksum,
and that it is the record the location names) and the meta and payload
checksums; corrupt bytes raise ``StorageError`` and are never returned (after a
failed ``read_into`` the caller's buffer holds garbage and must not be used).
A location whose segment has been freed raises ``NotFound`` (a miss): a freed
segment is unlinked only after the reads already using it finish (reader
counts per segment), so a read never sees a recycled file.

Faults: every file operation goes through ``SSDFileSystem`` (``kvstore.ssd_fs``).
An ``OSError`` from a write, fsync or read (ENOSPC, EIO, ...) raises
``StorageError`` and marks the tier ``degraded`` (logged once): a degraded tier
refuses writes and removes with ``StorageError`` but keeps serving reads of
what it has. A failed write is cut back (truncate) and its segment sealed, so
nothing already written is disturbed; ``reset_degraded()`` lets an operator
try again (new writes go to a new segment). A checksum failure on read raises
``StorageError`` without degrading (one bad record, not a bad disk).

Threads: every method is thread-safe. Appends, removes, eviction and recovery
are serialised by one lock; reads take no lock during their I/O, and flush
fsyncs outside it. The eviction callback runs on the writing thread while that
lock is held (so its report cannot race a later write of the same key); it may
call back into the tier, but must not wait for another thread that is itself
calling ``write``/``remove``/``flush`` on this tier.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

import xxhash

from kvstore.errors import CapacityError, InvalidArgument, NotFound, StorageError
from kvstore.keys import ROOT_KEY
from kvstore.ssd_compress import check_mode, compress, decompress
from kvstore.ssd_fs import SSDFileSystem
from kvstore.ssd_manifest import (
    MANIFEST_NAME,
    MANIFEST_TMP,
    decode_manifest,
    encode_manifest,
    read_manifest,
    write_manifest,
)
from kvstore.ssd_record import (
    DEFAULT_ALIGN,
    FLAG_LZ4,
    FLAG_TOMBSTONE,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SSDLocation,
    SSDRecordHeader,
    align_up,
    header_from_fields,
    pack_record_header,
    tombstone_pairs,
    tombstone_payload,
    unpack_record_header,
)
from kvstore.ssd_segment import (
    Segment,
    create_segment,
    open_segment,
    parse_segment_name,
    scan_segment,
)
from kvstore.store_api import TierStats

log = logging.getLogger("kvstore.ssd")

Key = tuple[bytes, bytes]
EvictionCallback = Callable[[list[Key]], None]


class SSDTier:
    def __init__(
        self,
        directory,
        capacity_bytes: int,
        segment_bytes: int = 256 << 20,
        compression: str = "auto",
        *,
        fs: SSDFileSystem | None = None,
        align: int = DEFAULT_ALIGN,
        verify_on_recover: bool = True,
    ) -> None:
        if align < 512 or align & (align - 1) or SEGMENT_HEADER_SIZE % align:
            raise InvalidArgument("align must be a power of two in [512, 4096]")
        if capacity_bytes < SEGMENT_HEADER_SIZE + 2 * align:
            raise InvalidArgument("capacity_bytes too small for one segment")
        if segment_bytes < SEGMENT_HEADER_SIZE + align:
            raise InvalidArgument("segment_bytes too small")
        self.directory = os.fspath(directory)
        self._capacity = int(capacity_bytes)
        self.segment_bytes = int(segment_bytes)
        self.compression = check_mode(compression)
        self.align = align
        self.verify_on_recover = verify_on_recover
        self._fs = fs or SSDFileSystem()
        self._zeros = bytes(align)

        self._lock = threading.RLock()  # appends, removes, eviction, recovery
        self._meta = threading.Lock()  # index, segment table, counters (short holds)
        self._readers_done = threading.Condition(self._meta)
        self._segments: dict[int, Segment] = {}  # ascending id = oldest first
        self._active: Segment | None = None
        self._index: dict[Key, SSDLocation] = {}
        self._used = 0
        self._manifest_size = 0
        self._seq = 0
        self._next_id = 1
        self._dir_changes = 0
        self._dir_synced = 0
        self._recovered = False
        self._closed = False
        self._degraded = False
        self._durability_lost = False
        self._callback: EvictionCallback | None = None
        self._evictions = self._bytes_in = self._bytes_out = self._errors = 0
        self._open()

    # ------------------------------------------------------------------ open

    def _open(self) -> None:
        fs = self._fs
        try:
            fs.makedirs(self.directory)
            names = fs.listdir(self.directory)
            if MANIFEST_TMP in names:
                fs.unlink(os.path.join(self.directory, MANIFEST_TMP))
            ids = sorted(i for i in map(parse_segment_name, names) if i is not None)
            for seg_id in ids:
                path = os.path.join(self.directory, f"seg-{seg_id:016x}.kvs")
                seg = open_segment(fs, path, seg_id)
                if seg is None:
                    log.error("ssd: segment %s has no valid header; deleted", path)
                    fs.unlink(path)
                    self._dir_changes += 1
                    continue
                self._segments[seg_id] = seg
                self._used += seg.size
            if ids:
                self._next_id = ids[-1] + 1
            data = read_manifest(fs, self.directory)
            self._manifest_size = len(data) if data is not None else 0
            self._used += self._manifest_size
        except OSError as e:
            for seg in self._segments.values():
                fs.close(seg.fd)
            raise StorageError(f"ssd: cannot open {self.directory}: {e}") from e

    # -------------------------------------------------------------- recovery

    def recover(self, verify: bool | None = None) -> list[tuple[SSDRecordHeader, SSDLocation]]:
        """Scan every segment; return the live records, parents before children.

        Order: write order, except that a record whose parent (same namespace)
        is live comes after that parent. Records whose parent is not live
        (evicted or removed) are returned too; the store decides what to do
        with them. ``verify`` (default: the constructor's ``verify_on_recover``)
        reads and checks every payload; without it payloads are checked on read.
        """
        verify = self.verify_on_recover if verify is None else verify
        with self._lock:
            self._check_open()
            found = self._recover_locked(verify, collect=True)
        return _parents_first(found)

    def _ensure_recovered(self) -> None:
        if not self._recovered:
            self._recover_locked(self.verify_on_recover, collect=False)

    def _recover_locked(self, verify: bool, collect: bool) -> dict:
        found: dict[Key, tuple[SSDRecordHeader | None, SSDLocation]] = {}
        index: dict[Key, SSDLocation] = {}
        seq = 0
        try:
            for seg in list(self._segments.values()):
                seg.live = set()
                for rec in scan_segment(self._fs, seg, verify):
                    seq = max(seq, rec.fields.seq + 1)
                    if rec.fields.flags & FLAG_TOMBSTONE:
                        for k in tombstone_pairs(rec.payload):
                            old = index.pop(k, None)
                            if old is not None:
                                self._segments[old.segment].live.discard(k)
                                found.pop(k, None)
                        continue
                    k = (rec.fields.namespace, rec.fields.key)
                    old = index.pop(k, None)
                    if old is not None:
                        self._segments[old.segment].live.discard(k)
                        found.pop(k, None)
                    index[k] = rec.location
                    seg.live.add(k)
                    header = header_from_fields(rec.fields, rec.meta) if collect else None
                    found[k] = (header, rec.location)
        except OSError as e:
            self._degrade(f"recover: {e}")
            raise StorageError(f"ssd: recovery failed: {e}") from e
        with self._meta:
            self._index = index
            self._seq = max(self._seq, seq)
        while self._used > self._capacity and self._segments:
            oldest = next(iter(self._segments.values()))
            log.warning("ssd: over capacity after restart; freeing segment %d", oldest.id)
            for k in self._free_segment(oldest):
                found.pop(k, None)
        self._recovered = True
        return found

    # ----------------------------------------------------------------- write

    def write(self, header: SSDRecordHeader, payload) -> SSDLocation:
        """Append a record; returns where it is. Raises StorageError, CapacityError."""
        mv = memoryview(payload).cast("B")
        if len(mv) != header.payload_len:
            raise InvalidArgument(
                f"payload is {len(mv)} bytes, header says {header.payload_len}")
        packed, stored = compress(mv, self.compression)
        meta = header.meta_bytes()
        return self._append(
            flags=FLAG_LZ4 if packed else 0,
            namespace=header.namespace, key=header.key, parent=header.parent,
            n_tokens=len(header.tokens), codec_len=len(header.codec.encode()),
            extra_len=len(header.extra), meta=meta, stored=stored, raw_len=len(mv),
        )

    def _append(self, *, flags, namespace, key, parent, n_tokens, codec_len, extra_len,
                meta, stored, raw_len) -> SSDLocation:
        payload_sum = xxhash.xxh3_64_intdigest(stored)
        meta_sum = xxhash.xxh3_64_intdigest(meta)
        body = RECORD_HEADER_SIZE + len(meta) + len(stored)
        record_len = align_up(body, self.align)
        freed: list[Key] = []
        with self._lock:
            try:
                self._check_writable()
                self._ensure_recovered()
                seg = self._make_room(record_len, freed)
                hdr = pack_record_header(
                    nonce=seg.nonce, flags=flags, seq=self._seq, namespace=namespace,
                    key=key, parent=parent, n_tokens=n_tokens, codec_len=codec_len,
                    extra_len=extra_len, stored_len=len(stored), raw_len=raw_len,
                    record_len=record_len, payload_sum=payload_sum, meta_sum=meta_sum,
                )
                at = seg.append_at
                try:
                    self._fs.pwritev_all(
                        seg.fd, [hdr, meta, stored, self._zeros[: record_len - body]], at)
                except OSError as e:
                    self._write_failed(seg, at, record_len, e)
                loc = SSDLocation(seg.id, at, record_len, RECORD_HEADER_SIZE + len(meta),
                                  len(stored), raw_len, flags)
                with self._meta:
                    self._seq += 1
                    seg.append_at = at + record_len
                    self._used += seg.append_at - seg.size
                    seg.size = seg.append_at
                    seg.written += 1
                    if not flags & FLAG_TOMBSTONE:
                        k = (namespace, key)
                        old = self._index.get(k)
                        if old is not None and old.segment in self._segments:
                            self._segments[old.segment].live.discard(k)
                        self._index[k] = loc
                        seg.live.add(k)
                        self._bytes_in += raw_len
                return loc
            finally:
                if freed:
                    self._notify(freed)

    def _make_room(self, record_len: int, freed: list[Key]) -> Segment:
        """The segment to append ``record_len`` bytes to, freeing old segments as needed."""
        if record_len + SEGMENT_HEADER_SIZE + self._manifest_size > self._capacity:
            raise CapacityError(
                f"ssd: a record of {record_len} bytes cannot fit in {self._capacity} bytes")
        seg = self._active
        if seg is not None and (seg.sealed or (
                seg.append_at > SEGMENT_HEADER_SIZE
                and seg.append_at + record_len > self.segment_bytes)):
            seg.sealed = True
            self._active = None
        while True:
            need = record_len + (SEGMENT_HEADER_SIZE if self._active is None else 0)
            if self._used + need <= self._capacity:
                break
            if not self._segments:
                raise CapacityError("ssd: no room left (a freed segment could not be unlinked)")
            freed.extend(self._free_segment(next(iter(self._segments.values()))))
        if self._active is None:
            self._active = self._new_segment()
        return self._active

    def _new_segment(self) -> Segment:
        seg_id = self._next_id
        self._next_id += 1
        try:
            seg = create_segment(self._fs, self.directory, seg_id, self.align)
        except OSError as e:
            self._degrade(f"creating a segment: {e}")
            raise StorageError(f"ssd: cannot create a segment: {e}") from e
        with self._meta:
            self._segments[seg_id] = seg
            self._used += seg.size
            self._dir_changes += 1
        return seg

    def _write_failed(self, seg: Segment, at: int, record_len: int, err: OSError) -> None:
        seg.sealed = True
        if self._active is seg:
            self._active = None
        try:
            self._fs.truncate(seg.fd, at)
            size = at
        except OSError:
            size = at + record_len  # at most this much may have landed
        with self._meta:
            if size > seg.size:
                self._used += size - seg.size
                seg.size = size
        self._degrade(f"write: {err}")
        raise StorageError(f"ssd: write failed: {err}") from err

    def _free_segment(self, seg: Segment) -> list[Key]:
        """Unlink a whole segment once its readers are done; returns its live keys."""
        with self._meta:
            seg.dying = True
            self._segments.pop(seg.id, None)
            keys = [k for k in seg.live if self._index.get(k, None) is not None
                    and self._index[k].segment == seg.id]
            for k in keys:
                del self._index[k]
            seg.live = set()
            self._readers_done.wait_for(lambda: seg.refs == 0)
            self._evictions += len(keys)
        if self._active is seg:
            self._active = None
        try:
            self._fs.close(seg.fd)
        except OSError:
            pass
        try:
            self._fs.unlink(seg.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._degrade(f"unlinking {seg.path}: {e}")
            return keys  # the file may still be there: keep counting it
        with self._meta:
            self._used -= seg.size
            self._dir_changes += 1
        return keys

    def _notify(self, keys: list[Key]) -> None:
        cb = self._callback
        if cb is None:
            return
        try:
            cb(keys)
        except Exception:  # a failing callback must not fail the write
            log.exception("ssd: eviction callback failed")

    # ---------------------------------------------------------------- remove

    def remove(self, namespace: bytes, key: bytes) -> None:
        """Logically delete a block; stays deleted after a restart once flushed."""
        self.remove_many([(namespace, key)])

    def remove_many(self, pairs: Iterable[Key]) -> int:
        """Delete several blocks with one tombstone record; returns how many were live.

        The blocks leave the index at once; if the tombstone cannot be written
        (degraded tier), ``StorageError`` is raised and they may come back
        after a restart.
        """
        pairs = [(bytes(ns), bytes(k)) for ns, k in pairs]
        with self._lock:
            self._check_open()
            self._ensure_recovered()
            with self._meta:
                present = []
                for p in dict.fromkeys(pairs):
                    loc = self._index.pop(p, None)
                    if loc is not None:
                        present.append(p)
                        seg = self._segments.get(loc.segment)
                        if seg is not None:
                            seg.live.discard(p)
            if not present:
                return 0
            payload = tombstone_payload(present)
            self._append(
                flags=FLAG_TOMBSTONE, namespace=ROOT_KEY, key=ROOT_KEY, parent=ROOT_KEY,
                n_tokens=0, codec_len=0, extra_len=0, meta=b"", stored=payload,
                raw_len=len(payload),
            )
            return len(present)

    # ------------------------------------------------------------------ read

    def _acquire(self, loc: SSDLocation) -> Segment:
        with self._meta:
            if self._closed:
                raise StorageError("ssd: tier is closed")
            seg = self._segments.get(loc.segment)
            if seg is None or seg.dying:
                raise NotFound(f"ssd: segment {loc.segment} was freed")
            seg.refs += 1
            return seg

    def _release(self, seg: Segment) -> None:
        with self._meta:
            seg.refs -= 1
            if seg.refs == 0:
                self._readers_done.notify_all()

    def _check_record(self, seg: Segment, loc: SSDLocation, head, payload) -> None:
        f = unpack_record_header(head[:RECORD_HEADER_SIZE], seg.nonce, seg.align)
        ok = (
            f is not None
            and len(head) == loc.payload_offset
            and f.record_len == loc.length
            and RECORD_HEADER_SIZE + f.meta_len == loc.payload_offset
            and f.stored_len == loc.stored_len
            and f.raw_len == loc.payload_len
            and f.flags == loc.flags
            and not f.flags & FLAG_TOMBSTONE
            and len(payload) == loc.stored_len
            and xxhash.xxh3_64_intdigest(memoryview(head)[RECORD_HEADER_SIZE:]) == f.meta_sum
            and xxhash.xxh3_64_intdigest(payload) == f.payload_sum
        )
        if not ok:
            with self._meta:
                self._errors += 1
            log.error("ssd: corrupt record at segment %d offset %d", loc.segment, loc.offset)
            raise StorageError(
                f"ssd: corrupt record at segment {loc.segment} offset {loc.offset}")

    def read(self, loc: SSDLocation) -> bytes:
        """The payload of the record at ``loc`` (checksums verified)."""
        seg = self._acquire(loc)
        try:
            head = self._fs.pread(seg.fd, loc.payload_offset, loc.offset)
            stored = self._fs.pread(seg.fd, loc.stored_len, loc.offset + loc.payload_offset)
            self._check_record(seg, loc, head, stored)
            data = decompress(stored, loc.payload_len) if loc.compressed else stored
        except OSError as e:
            if isinstance(e, StorageError):
                raise
            self._read_failed(loc, e)
        finally:
            self._release(seg)
        if len(data) != loc.payload_len:
            raise StorageError("ssd: payload length mismatch after decompression")
        with self._meta:
            self._bytes_out += len(data)
        return data

    def read_into(self, loc: SSDLocation, out) -> None:
        """Read the payload at ``loc`` into ``out`` (writable, >= payload_len bytes)."""
        dst = memoryview(out).cast("B")
        if dst.readonly or len(dst) < loc.payload_len:
            raise InvalidArgument("out must be writable and hold payload_len bytes")
        dst = dst[: loc.payload_len]
        if loc.compressed:
            dst[:] = self.read(loc)
            return
        seg = self._acquire(loc)
        try:
            head = bytearray(loc.payload_offset)
            self._fs.preadv_all(seg.fd, [head, dst], loc.offset)
            self._check_record(seg, loc, head, dst)
        except OSError as e:
            if isinstance(e, StorageError):
                raise
            self._read_failed(loc, e)
        finally:
            self._release(seg)
        with self._meta:
            self._bytes_out += loc.payload_len

    def _read_failed(self, loc: SSDLocation, err: OSError) -> None:
        self._degrade(f"read: {err}")
        raise StorageError(f"ssd: read of segment {loc.segment} failed: {err}") from err

    # ----------------------------------------------------------------- flush

    def flush(self) -> None:
        """Make everything written before this call durable (fsync data and directory)."""
        with self._lock:
            if self._closed:
                return
            with self._meta:
                targets = [(s, s.written) for s in self._segments.values() if s.written > s.synced]
                for s, _ in targets:
                    s.refs += 1
                dir_target = self._dir_changes if self._dir_changes > self._dir_synced else 0
        try:
            for seg, written in targets:
                self._fs.fsync(seg.fd)
                with self._meta:
                    seg.synced = max(seg.synced, written)
            if dir_target:
                self._fs.fsync_dir(self.directory)
                with self._meta:
                    self._dir_synced = max(self._dir_synced, dir_target)
        except OSError as e:
            self._durability_lost = True
            self._degrade(f"fsync: {e}")
            raise StorageError(f"ssd: flush failed: {e}") from e
        finally:
            for seg, _ in targets:
                self._release(seg)
        if self._durability_lost:
            raise StorageError("ssd: an earlier fsync failed; durability is not guaranteed")

    # ------------------------------------------------------------- namespaces

    def save_namespaces(self, specs: dict[bytes, dict]) -> None:
        """Atomically replace the namespace manifest (fingerprint -> NamespaceSpec dict)."""
        data = encode_manifest(specs)
        freed: list[Key] = []
        with self._lock:
            try:
                self._check_writable()
                self._ensure_recovered()
                # the old manifest and the new temporary file exist together for a moment
                while (self._used + len(data) > self._capacity and self._segments):
                    freed.extend(self._free_segment(next(iter(self._segments.values()))))
                if self._used + len(data) > self._capacity:
                    raise CapacityError("ssd: the namespace manifest does not fit")
                try:
                    write_manifest(self._fs, self.directory, data)
                except OSError as e:
                    self._degrade(f"manifest: {e}")
                    raise StorageError(f"ssd: cannot write the manifest: {e}") from e
                with self._meta:
                    self._used += len(data) - self._manifest_size
                    self._manifest_size = len(data)
            finally:
                if freed:
                    self._notify(freed)

    def load_namespaces(self) -> dict[bytes, dict]:
        try:
            data = read_manifest(self._fs, self.directory)
        except OSError as e:
            raise StorageError(f"ssd: cannot read the manifest: {e}") from e
        return {} if data is None else decode_manifest(data, MANIFEST_NAME)

    # ------------------------------------------------------------------ state

    def set_eviction_callback(self, fn: EvictionCallback | None) -> None:
        self._callback = fn

    def location(self, namespace: bytes, key: bytes) -> SSDLocation | None:
        with self._meta:
            return self._index.get((namespace, key))

    def __contains__(self, item: Key) -> bool:
        with self._meta:
            return item in self._index

    def __len__(self) -> int:
        with self._meta:
            return len(self._index)

    def keys(self) -> list[Key]:
        with self._meta:
            return list(self._index)

    def segment_sizes(self) -> dict[int, int]:
        """Segment id -> bytes it occupies (oldest first)."""
        with self._meta:
            return {s.id: s.size for s in self._segments.values()}

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def degraded(self) -> bool:
        return self._degraded

    def reset_degraded(self) -> None:
        """Try writing again after a fault (new writes go to a new segment)."""
        with self._lock:
            if self._durability_lost:
                raise StorageError("ssd: an fsync failed; reopen the tier instead")
            self._degraded = False
            if self._active is not None:
                self._active.sealed = True
                self._active = None

    def stats(self) -> TierStats:
        with self._meta:
            return TierStats(
                name="ssd", capacity_bytes=self._capacity, used_bytes=self._used,
                blocks=len(self._index), evictions=self._evictions,
                bytes_in=self._bytes_in, bytes_out=self._bytes_out, errors=self._errors,
                degraded=self._degraded,
            )

    def _degrade(self, reason: str) -> None:
        with self._meta:
            self._errors += 1
            first = not self._degraded
            self._degraded = True
        if first:
            log.error("ssd: tier %s degraded: %s", self.directory, reason)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("ssd: tier is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._degraded:
            raise StorageError("ssd: tier is degraded")

    def close(self) -> None:
        """Flush and close every segment (idempotent)."""
        with self._lock:
            if self._closed:
                return
            err = None
            try:
                self.flush()
            except StorageError as e:
                err = e
            with self._meta:
                self._closed = True
                self._readers_done.wait_for(
                    lambda: all(s.refs == 0 for s in self._segments.values()))
                segs = list(self._segments.values())
            for seg in segs:
                try:
                    self._fs.close(seg.fd)
                except OSError:
                    pass
            self._active = None
        if err is not None:
            raise err

    def __enter__(self) -> SSDTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SSDTier({self.directory!r}, used={self._used}, cap={self._capacity}, "
                f"segments={len(self._segments)}, blocks={len(self._index)})")


def _parents_first(found: dict) -> list[tuple[SSDRecordHeader, SSDLocation]]:
    """Records in write order, each moved after its parent when the parent is live."""
    out = []
    emitted: set[Key] = set()
    for k in found:
        chain = []
        cur = k
        while cur not in emitted and cur in found:
            emitted.add(cur)
            chain.append(cur)
            header = found[cur][0]
            if header.parent == ROOT_KEY:
                break
            cur = (header.namespace, header.parent)
        out.extend(found[c] for c in reversed(chain))
    return out
