"""The SSD tier's read path: one record, one record into a caller buffer, many at once.

A mixin of ``SSDTier`` (kept apart so each file holds one concept): it relies on
the tier's ``_log`` (segment references), ``_io`` (record I/O), ``_meta`` lock,
counters, ``_direct_min``, ``io_threads``, ``_pool``, ``_closed`` and
``_degrade``. Every read holds a reference on its segment, so a segment freed
meanwhile fails the read cleanly (NotFound) instead of returning reused bytes,
and every payload's checksum is verified before it is returned.
"""

from __future__ import annotations

import errno
import logging
from concurrent.futures import ThreadPoolExecutor

from kvstore.errors import InvalidArgument, KVStoreError, StorageError
from kvstore.ssd.compress import decompress
from kvstore.ssd.record import SSDLocation
from kvstore.ssd.record_io import record_matches
from kvstore.ssd.segment import Segment

log = logging.getLogger("kvstore.ssd")


class SSDReads:
    def _acquire(self, loc: SSDLocation) -> Segment:
        if self._closed:
            raise StorageError("ssd: tier is closed")
        return self._log.acquire(loc.segment)

    def _release(self, seg: Segment) -> None:
        self._log.release(seg)

    def _check_record(self, seg: Segment, loc: SSDLocation, head, payload) -> None:
        if not record_matches(seg, loc, head, payload):
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
        return list(self._io_pool().map(one, range(len(locs))))

    def _io_pool(self) -> ThreadPoolExecutor:
        with self._meta:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="ssd-io")
            return self._pool

    def _read_failed(self, loc: SSDLocation, err: OSError) -> None:
        self._degrade(f"read: {err}")
        raise StorageError(f"ssd: read of segment {loc.segment} failed: {err}") from err

