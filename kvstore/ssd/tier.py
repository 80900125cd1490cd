"""SSDTier: the log-structured SSD tier of the store (below the CPU arena).

Blocks are appended as checksummed records (format: ``kvstore.ssd.record``)
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

Use: open, ``load_namespaces()`` (re-register them), ``recover()`` (rebuild
the trees from its records), ``set_eviction_callback``, then write and read.
A write or remove before ``recover()`` scans the segments itself first.

Durability: a record is written with one ``pwritev`` (head, payload,
padding): payloads of 256 KiB and more with O_DIRECT straight from the
caller's buffer when it is aligned (``kvstore.ssd.record_io``), smaller ones through
the page cache. ``flush()`` fsyncs every segment written to since the last
flush and, when segments were created or unlinked, the directory. What was
written before ``flush()`` was called survives SIGKILL and power loss; later
writes may or may not (they do survive SIGKILL of the process alone).
``remove`` writes a tombstone record, durable at the next flush like any
record.

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

Faults: every file operation goes through ``SSDFileSystem`` (``kvstore.ssd.fs``).
An ``OSError`` from a write, fsync or read (ENOSPC, EIO, ...) raises
``StorageError`` and marks the tier ``degraded`` (logged once): a degraded tier
refuses writes and removes with ``StorageError`` but keeps serving reads of
what it has. A failed write is cut back (truncate) and its segment sealed, so
nothing already written is disturbed; ``reset_degraded()`` lets an operator
try again (new writes go to a new segment). A checksum failure on read raises
``StorageError`` without degrading (one bad record, not a bad disk).

Batches: ``write_many`` compresses and checksums its records on helper
threads and writes consecutive records with one ``pwritev`` (group commit, up
to 8 MiB); ``read_many_into`` keeps several reads in flight. Both report
errors per item. Use them for a prefix of many blocks: one block at a time,
the device idles while each payload is checksummed (about 0.6x of dd for
1 MiB blocks, against 0.9-1.2x batched; ``benchmarks.store_ssd``).

Parts: ``SegmentLog`` (``kvstore.ssd.log``: segment files and their bytes),
``RecordIndex`` (where each live block is), ``RecordWriter`` and
``RecordReader`` (the write and read paths), and the state they share
explicitly (``kvstore.ssd.tier_state``: health, O_DIRECT choice, counters,
helper threads). The tier holds the append lock and orchestrates. Each open
segment holds two descriptors (buffered and O_DIRECT): a tier of N segments
needs 2N descriptors (a 1 TB tier of 256 MiB segments: ~8200; raise
``ulimit -n`` where the default is 1024).

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
from collections.abc import Iterable

from kvstore.errors import CapacityError, InvalidArgument, KVStoreError, StorageError
from kvstore.keys import ROOT_KEY
from kvstore.ssd.compress import check_mode
from kvstore.ssd.fs import SSDFileSystem
from kvstore.ssd.log import SegmentLog
from kvstore.ssd.manifest import (
    MANIFEST_NAME,
    decode_manifest,
    encode_manifest,
    read_manifest,
    write_manifest,
)
from kvstore.ssd.record import (
    DEFAULT_ALIGN,
    FLAG_TOMBSTONE,
    SEGMENT_HEADER_SIZE,
    SSDLocation,
    SSDRecordHeader,
    tombstone_payload,
)
from kvstore.ssd.record_index import Key, RecordIndex
from kvstore.ssd.record_io import DIRECT_MIN_BYTES, PreparedRecord, RecordIO
from kvstore.ssd.record_reader import RecordReader
from kvstore.ssd.record_writer import (
    GROUP_RECORDS,
    EvictionCallback,
    RecordWriter,
    try_call,
)
from kvstore.ssd.recovery import parents_first, scan_all
from kvstore.ssd.tier_state import DirectIO, IOPool, TierCounters, TierHealth
from kvstore.store_api import TierStats

log = logging.getLogger("kvstore.ssd")


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
        """``direct_io``: None (default) O_DIRECT for payloads of 256 KiB and up,
        True for every payload, False never (it also falls back by itself
        where the filesystem refuses O_DIRECT)."""
        if align < 512 or align & (align - 1) or SEGMENT_HEADER_SIZE % align:
            raise InvalidArgument("align must be a power of two in [512, 4096]")
        if capacity_bytes < SEGMENT_HEADER_SIZE + 2 * align:
            raise InvalidArgument("capacity_bytes too small for one segment")
        if segment_bytes < SEGMENT_HEADER_SIZE + align:
            raise InvalidArgument("segment_bytes too small")
        self.directory = os.fspath(directory)
        self.segment_bytes = int(segment_bytes)
        self.compression = check_mode(compression)
        self.align = align
        self.verify_on_recover = verify_on_recover
        self._fs = fs or SSDFileSystem()
        self._lock = threading.RLock()  # appends, removes, eviction, recovery
        self._recovered = False
        self._health = TierHealth(self.directory)
        self._counters = TierCounters()
        self._index = RecordIndex()
        self._pool = IOPool(io_threads)
        # O_DIRECT for payloads of this size and up (None: never)
        self._direct = DirectIO({None: DIRECT_MIN_BYTES, True: 0, False: None}[direct_io])
        self._log = SegmentLog(self._fs, self.directory, int(capacity_bytes), self.segment_bytes,
                               align, direct=self._direct.min_bytes is not None)
        io = RecordIO(self._fs, align)
        self._writer = RecordWriter(self._log, io, self._index, self._health, self._direct,
                                    self._counters, self.compression, align)
        self._reader = RecordReader(self._log, io, self._health, self._direct, self._counters,
                                    self._pool)
        self._log.open()
        if not self._log.direct:
            self._direct.refuse()

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
            self._health.check_open()
            found = self._recover_locked(verify, collect=True)
        return parents_first(found)

    def _ensure_recovered(self) -> None:
        if not self._recovered:
            self._recover_locked(self.verify_on_recover, collect=False)

    def _recover_locked(self, verify: bool, collect: bool) -> dict:
        found: dict = {}
        try:
            found, index, seq = scan_all(self._fs, self._log.segments.values(), verify, collect)
            self._index.replace(index)
            self._writer.seq = max(self._writer.seq, seq)
            while self._log.used > self._log.capacity and self._log.segments:
                oldest = self._log.oldest()
                log.warning("ssd: over capacity after restart; freeing segment %d", oldest.id)
                self._log.free(oldest)
        except OSError as e:
            self._health.degrade(f"recover: {e}")
            raise StorageError(f"ssd: recovery failed: {e}") from e
        finally:
            for k in self._writer.forget_freed():  # not reported: the store has not seen them
                found.pop(k, None)
        self._recovered = True
        return found

    # ----------------------------------------------------------------- write

    def write(self, header: SSDRecordHeader, payload) -> SSDLocation:
        """Append a record; returns where it is. Raises StorageError, CapacityError."""
        (result,) = self._append([self._writer.prepare(header, payload)])
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
        prepare = self._writer.prepare
        if len(items) <= 1 or self._pool.threads <= 1:
            prepared = [try_call(prepare, h, p) for h, p in items]
        else:
            prepared = list(self._pool.get().map(lambda hp: try_call(prepare, *hp), items))
        out: list[SSDLocation | Exception] = list(prepared)
        good = [i for i, r in enumerate(prepared) if isinstance(r, PreparedRecord)]
        for start in range(0, len(good), GROUP_RECORDS):
            chunk = good[start : start + GROUP_RECORDS]
            for i, r in zip(chunk, self._append([prepared[i] for i in chunk])):
                out[i] = r
        return out

    def _append(self, recs: list[PreparedRecord]) -> list[SSDLocation | Exception]:
        with self._lock:
            try:
                self._health.check_writable()
                self._ensure_recovered()
                return self._writer.append(recs)
            except KVStoreError as e:
                return [e] * len(recs)
            finally:
                self._writer.notify()

    # ------------------------------------------------------------------ read

    def read(self, loc: SSDLocation) -> bytes:
        """The payload of the record at ``loc`` (checksums verified)."""
        return self._reader.read(loc)

    def read_into(self, loc: SSDLocation, out) -> None:
        """Read the payload at ``loc`` into ``out`` (see ``RecordReader.read_into``)."""
        self._reader.read_into(loc, out)

    def read_many_into(self, locs: list[SSDLocation], outs: list) -> list[Exception | None]:
        """Read several payloads, ``io_threads`` at a time; per location: None or its error."""
        return self._reader.read_many_into(locs, outs)

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
            self._health.check_open()
            self._ensure_recovered()
            present = self._index.remove(pairs, self._log.segments)
            if not present:
                return 0
            payload = tombstone_payload(present)
            (result,) = self._append([PreparedRecord(
                flags=FLAG_TOMBSTONE, namespace=ROOT_KEY, key=ROOT_KEY, parent=ROOT_KEY,
                n_tokens=0, codec_len=0, extra_len=0, meta=b"", stored=payload,
                raw_len=len(payload),
            )])
            if isinstance(result, Exception):
                raise result
            return len(present)

    # ----------------------------------------------------------------- flush

    def flush(self) -> None:
        """Make everything written before this call durable (fsync data and directory)."""
        health = self._health
        if health.closed:
            return
        try:
            self._log.sync()
        except OSError as e:
            health.durability_lost = True
            health.degrade(f"fsync: {e}")
            raise StorageError(f"ssd: flush failed: {e}") from e
        if health.durability_lost:
            raise StorageError("ssd: an earlier fsync failed; durability is not guaranteed")

    # ------------------------------------------------------------- namespaces

    def save_namespaces(self, specs: dict[bytes, dict]) -> None:
        """Atomically replace the namespace manifest (fingerprint -> NamespaceSpec dict)."""
        data = encode_manifest(specs)
        with self._lock:
            try:
                self._health.check_writable()
                self._ensure_recovered()
                # the old manifest and the new temporary file exist together for a moment
                try:
                    self._log.make_room(len(data))
                    write_manifest(self._fs, self.directory, data)
                except CapacityError:
                    raise
                except OSError as e:
                    self._health.degrade(f"manifest: {e}")
                    raise StorageError(f"ssd: cannot write the manifest: {e}") from e
                self._log.set_manifest_bytes(len(data))
            finally:
                self._writer.notify()

    def load_namespaces(self) -> dict[bytes, dict]:
        try:
            data = read_manifest(self._fs, self.directory)
        except OSError as e:
            raise StorageError(f"ssd: cannot read the manifest: {e}") from e
        return {} if data is None else decode_manifest(data, MANIFEST_NAME)

    # ------------------------------------------------------------------ state

    def free_oldest(self, until_used: int) -> int:
        """Free whole oldest segments (the active one too) until at most ``until_used``
        bytes are used; their live keys go to the eviction callback. Returns bytes freed."""
        with self._lock:
            self._health.check_open()
            self._ensure_recovered()
            before = self._log.used
            try:
                while self._log.used > until_used and self._log.segments:
                    self._log.free(self._log.oldest())
            finally:
                self._writer.notify()
            return before - self._log.used

    def set_eviction_callback(self, fn: EvictionCallback | None) -> None:
        self._writer.callback = fn

    def location(self, namespace: bytes, key: bytes) -> SSDLocation | None:
        return self._index.get((namespace, key))

    def __contains__(self, item: Key) -> bool:
        return item in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[Key]:
        return self._index.keys()

    def segment_sizes(self) -> dict[int, int]:
        """Segment id -> bytes it occupies (oldest first)."""
        return self._log.sizes()

    @property
    def used_bytes(self) -> int:
        return self._log.used

    @property
    def capacity_bytes(self) -> int:
        return self._log.capacity

    @capacity_bytes.setter
    def capacity_bytes(self, capacity: int) -> None:
        """A new cap: the next write frees oldest segments to fit it (``free_oldest``: now)."""
        self._log.capacity = int(capacity)

    @property
    def degraded(self) -> bool:
        return self._health.degraded

    def reset_degraded(self) -> None:
        """Try writing again after a fault (new writes go to a new segment)."""
        with self._lock:
            if self._health.durability_lost:
                raise StorageError("ssd: an fsync failed; reopen the tier instead")
            self._health.degraded = False
            self._log.seal_active()

    def stats(self) -> TierStats:
        c, h = self._counters, self._health
        return TierStats(
            name="ssd", capacity_bytes=self._log.capacity, used_bytes=self._log.used,
            blocks=len(self._index), evictions=c.evictions, bytes_in=c.bytes_in,
            bytes_out=c.bytes_out, errors=h.errors, degraded=h.degraded,
        )

    def close(self) -> None:
        """Flush and close every segment (idempotent)."""
        with self._lock:
            if self._health.closed:
                return
            err = None
            try:
                self.flush()
            except StorageError as e:
                err = e
            self._health.closed = True
            self._log.close()
            self._pool.shutdown()
        if err is not None:
            raise err

    def __enter__(self) -> SSDTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SSDTier({self.directory!r}, used={self.used_bytes}, "
                f"cap={self.capacity_bytes}, segments={len(self._log.segments)}, "
                f"blocks={len(self._index)})")
