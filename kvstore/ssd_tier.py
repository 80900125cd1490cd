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

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import xxhash

from kvstore.errors import CapacityError, InvalidArgument, KVStoreError, NotFound, StorageError
from kvstore.keys import ROOT_KEY
from kvstore.ssd_compress import check_mode, compress, decompress
from kvstore.ssd_fs import SSDFileSystem
from kvstore.ssd_io import DIRECT_MIN_BYTES, RecordIO
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
    pack_record_header,
    payload_offset,
    record_length,
    tombstone_payload,
    unpack_record_header,
)
from kvstore.ssd_recovery import parents_first, scan_all
from kvstore.ssd_segment import (
    Segment,
    close_segment,
    create_segment,
    open_direct,
    open_segment,
    parse_segment_name,
)
from kvstore.store_api import TierStats

log = logging.getLogger("kvstore.ssd")

Key = tuple[bytes, bytes]
EvictionCallback = Callable[[list[Key]], None]


@dataclass
class _Prepared:
    """A record ready to append: compressed (or not) and checksummed."""

    flags: int
    namespace: bytes
    key: bytes
    parent: bytes
    n_tokens: int
    codec_len: int
    extra_len: int
    meta: bytes
    stored: object  # bytes-like
    raw_len: int
    payload_sum: int = 0
    meta_sum: int = 0

    def __post_init__(self) -> None:
        self.payload_sum = xxhash.xxh3_64_intdigest(self.stored)
        self.meta_sum = xxhash.xxh3_64_intdigest(self.meta)


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
        direct_io: bool | None = None,
        io_threads: int = 4,
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
        self._io = RecordIO(self._fs, align)
        self.io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        # O_DIRECT for payloads of this size and up (None: large ones only; False: never)
        self._direct_min = {None: DIRECT_MIN_BYTES, True: 0, False: None}[direct_io]

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
                if self._direct_min is not None and not open_direct(fs, seg):
                    self._direct_min = None
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
        return parents_first(found)

    def _ensure_recovered(self) -> None:
        if not self._recovered:
            self._recover_locked(self.verify_on_recover, collect=False)

    def _recover_locked(self, verify: bool, collect: bool) -> dict:
        try:
            found, index, seq = scan_all(self._fs, self._segments.values(), verify, collect)
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
        return self._append(self._prepare(header, payload))

    def write_many(self, items) -> list[SSDLocation | Exception]:
        """Write ``(header, payload)`` pairs; per item its location or its error.

        Compression and checksums of the next records run on helper threads
        while this one writes, so the device does not wait for the CPU.
        """
        items = list(items)
        if len(items) <= 1 or self.io_threads <= 1:
            return [self._try(self.write, h, p) for h, p in items]
        pool = self._read_pool()
        window = 2 * self.io_threads
        futures = [pool.submit(self._prepare, h, p) for h, p in items[:window]]
        out: list[SSDLocation | Exception] = []
        for i in range(len(items)):
            if i + window < len(items):
                futures.append(pool.submit(self._prepare, *items[i + window]))
            try:
                out.append(self._append(futures[i].result()))
            except (KVStoreError, OSError) as e:
                out.append(e)
        return out

    @staticmethod
    def _try(fn, *args):
        try:
            return fn(*args)
        except (KVStoreError, OSError) as e:
            return e

    def _prepare(self, header: SSDRecordHeader, payload) -> _Prepared:
        """Compress and checksum a block (no lock held)."""
        mv = memoryview(payload).cast("B")
        if len(mv) != header.payload_len:
            raise InvalidArgument(
                f"payload is {len(mv)} bytes, header says {header.payload_len}")
        packed, stored = compress(mv, self.compression)
        return _Prepared(
            flags=FLAG_LZ4 if packed else 0,
            namespace=header.namespace, key=header.key, parent=header.parent,
            n_tokens=len(header.tokens), codec_len=len(header.codec.encode()),
            extra_len=len(header.extra), meta=header.meta_bytes(), stored=stored,
            raw_len=len(mv),
        )

    def _append(self, rec: _Prepared) -> SSDLocation:
        flags, namespace, key, meta, stored = rec.flags, rec.namespace, rec.key, rec.meta, rec.stored
        raw_len = rec.raw_len
        head_len = payload_offset(len(meta), self.align)
        record_len = record_length(len(meta), len(stored), self.align)
        direct = self._direct_min is not None and len(stored) >= self._direct_min
        freed: list[Key] = []
        with self._lock:
            try:
                self._check_writable()
                self._ensure_recovered()
                seg = self._make_room(record_len, freed)
                hdr = pack_record_header(
                    nonce=seg.nonce, flags=flags, seq=self._seq, namespace=namespace,
                    key=key, parent=rec.parent, n_tokens=rec.n_tokens,
                    codec_len=rec.codec_len, extra_len=rec.extra_len, stored_len=len(stored),
                    raw_len=raw_len, record_len=record_len, payload_sum=rec.payload_sum,
                    meta_sum=rec.meta_sum,
                )
                head = b"".join((hdr, meta, bytes(head_len - len(hdr) - len(meta))))
                at = seg.append_at
                self._write_record(seg, at, head, stored, record_len, direct)
                loc = SSDLocation(seg.id, at, record_len, head_len, len(stored), raw_len, flags)
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

    def _write_record(self, seg, at, head, stored, record_len, direct) -> None:
        try:
            try:
                self._io.write(seg, at, head, stored, record_len, direct)
            except OSError as e:
                if not (direct and e.errno == errno.EINVAL):
                    raise
                log.warning("ssd: O_DIRECT write refused (%s); writing buffered from now on", e)
                self._direct_min = None
                self._io.write(seg, at, head, stored, record_len, False)
        except OSError as e:
            self._write_failed(seg, at, record_len, e)

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
            if self._direct_min is not None and not open_direct(self._fs, seg):
                log.info("ssd: %s refuses O_DIRECT; all I/O is buffered", self.directory)
                self._direct_min = None
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
        close_segment(self._fs, seg)
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
            self._append(_Prepared(
                flags=FLAG_TOMBSTONE, namespace=ROOT_KEY, key=ROOT_KEY, parent=ROOT_KEY,
                n_tokens=0, codec_len=0, extra_len=0, meta=b"", stored=payload,
                raw_len=len(payload),
            ))
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
            and payload_offset(f.meta_len, seg.align) == loc.payload_offset
            and f.stored_len == loc.stored_len
            and f.raw_len == loc.payload_len
            and f.flags == loc.flags
            and not f.flags & FLAG_TOMBSTONE
            and len(payload) == loc.stored_len
            and f.meta_sum == xxhash.xxh3_64_intdigest(
                memoryview(head)[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + f.meta_len])
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
            head, stored = self._io.read_head_and_payload(
                seg, loc.offset, loc.payload_offset, loc.stored_len)
            self._check_record(seg, loc, head, stored)
            data = decompress(stored, loc.payload_len) if loc.compressed else stored
        except StorageError:
            raise
        except OSError as e:
            self._read_failed(loc, e)
        finally:
            self._release(seg)
        if len(data) != loc.payload_len:
            raise StorageError("ssd: payload length mismatch after decompression")
        with self._meta:
            self._bytes_out += len(data)
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
        direct = self._direct_min is not None and loc.stored_len >= self._direct_min
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
            self._read_failed(loc, e)
        finally:
            self._release(seg)
        with self._meta:
            self._bytes_out += loc.payload_len

    def read_many_into(self, locs: list[SSDLocation], outs: list) -> list[Exception | None]:
        """Read several payloads, ``io_threads`` at a time; per location: None or its error.

        Several reads in flight keep the device busy while earlier payloads are
        checksummed (a prefix of many blocks is promoted this way).
        """
        if len(locs) != len(outs):
            raise InvalidArgument("locs and outs differ in length")

        def one(i):
            try:
                self.read_into(locs[i], outs[i])
                return None
            except (KVStoreError, OSError) as e:
                return e

        if len(locs) <= 1 or self.io_threads <= 1:
            return [one(i) for i in range(len(locs))]
        return list(self._read_pool().map(one, range(len(locs))))

    def _read_pool(self) -> ThreadPoolExecutor:
        with self._meta:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="ssd-io")
            return self._pool

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
                close_segment(self._fs, seg)
            self._active = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if err is not None:
            raise err

    def __enter__(self) -> SSDTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SSDTier({self.directory!r}, used={self._used}, cap={self._capacity}, "
                f"segments={len(self._segments)}, blocks={len(self._index)})")

