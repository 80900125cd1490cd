"""Record bytes in flight: prepared (checksummed), written, read back and checked.

``PreparedRecord`` is a block ready to append (checksums computed off the
append lock); ``RecordIO`` moves records to and from a segment file, buffered
or with O_DIRECT; ``record_matches`` checks what a read brought back.

Buffered (``pwritev`` / ``preadv`` through the page cache) is used for small
records and on filesystems that refuse O_DIRECT. Large uncompressed payloads
(``DIRECT_MIN_BYTES`` and up) go with O_DIRECT when the tier allows it: the
kernel moves them by DMA between the device and the caller's buffer with no
copy and no page-cache churn, which is what keeps the tier at disk speed on a
busy CPU (a buffered write costs a memcpy into the page cache per byte).

O_DIRECT needs file offsets, lengths and memory addresses aligned (512 bytes
on Linux block devices; file offsets here are 4 KiB aligned by the format).
The record's first ``payload_offset`` bytes (header, meta, zeros) and the
payload's last partial 512 bytes plus the zero padding are staged in a
page-aligned buffer; the payload's aligned bulk is written from, or read
into, the caller's buffer itself when that buffer is 512-byte aligned (a CPU
arena slot is), and copied through the staging buffer otherwise.
"""

from __future__ import annotations

import errno
import mmap
import threading
from dataclasses import dataclass

import numpy as np
import xxhash

from kvstore.errors import StorageError
from kvstore.ssd.fs import SSDFileSystem
from kvstore.ssd.record import (
    FLAG_TOMBSTONE,
    RECORD_HEADER_SIZE,
    SSDLocation,
    payload_offset,
    unpack_record_header,
)
from kvstore.ssd.segment import Segment

DIO_ALIGN = 512
DIRECT_MIN_BYTES = 256 << 10


def address(buf) -> int:
    """Memory address of a buffer's first byte."""
    mv = memoryview(buf)
    if len(mv) == 0:
        return 0
    return np.frombuffer(mv, dtype=np.uint8).ctypes.data


def dio_aligned(buf) -> bool:
    return address(buf) % DIO_ALIGN == 0


class AlignedBuffer:
    """A reusable page-aligned scratch buffer (anonymous mmap)."""

    def __init__(self) -> None:
        self._mm: mmap.mmap | None = None

    def view(self, n: int) -> memoryview:
        if self._mm is None or len(self._mm) < n:
            self._mm = mmap.mmap(-1, max(1 << 16, (n + 0xFFFF) & ~0xFFFF))
        return memoryview(self._mm)[:n]


class ShortRead(StorageError):
    """The file ends inside the record (truncated): corruption, not a failing disk."""

    def __init__(self, got: int, want: int) -> None:
        super().__init__(errno.EIO, f"ssd: short read: {got} of {want} bytes (truncated file)")


@dataclass
class PreparedRecord:
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


def record_matches(seg: Segment, loc: SSDLocation, head, payload) -> bool:
    """Whether ``head`` (the record's first ``payload_offset`` bytes) and ``payload``
    (its stored bytes) are the intact record that ``loc`` names."""
    f = unpack_record_header(head[:RECORD_HEADER_SIZE], seg.nonce, seg.align)
    return (
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


class RecordIO:
    """Record writes (called under the tier's append lock) and reads (any thread)."""

    def __init__(self, fs: SSDFileSystem, align: int) -> None:
        self.fs = fs
        self.align = align
        self._zeros = bytes(align)  # padding is always < align
        self._staging = AlignedBuffer()
        self._local = threading.local()

    def _read_buffer(self, n: int) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = AlignedBuffer()
        return buf.view(n)

    # ---------------------------------------------------------------- write

    def write(self, seg: Segment, at: int, records: list[tuple[bytes, object, int]],
              direct: bool) -> None:
        """Write consecutive records at ``at`` with one ``pwritev``.

        ``records``: ``(head, stored, record_len)`` each; ``head`` is the
        record's first ``payload_offset`` bytes, zero padding follows ``stored``.
        """
        if not direct or seg.dfd is None:
            iov = []
            for head, stored, record_len in records:
                iov += [head, stored, self._zeros[: record_len - len(head) - len(stored)]]
            self.fs.pwritev_all(seg.fd, iov, at)
            return
        plan = []  # (head, stored, bulk, rest, pad)
        staged = 0
        for head, stored, record_len in records:
            stored = memoryview(stored).cast("B")
            bulk = len(stored) // DIO_ALIGN * DIO_ALIGN if dio_aligned(stored) else 0
            pad = record_len - len(head) - len(stored)
            plan.append((head, stored, bulk, pad))
            staged += len(head) + len(stored) - bulk + pad
        stage = self._staging.view(staged)
        iov = []
        pos = 0
        for head, stored, bulk, pad in plan:
            stage[pos : pos + len(head)] = head
            iov.append(stage[pos : pos + len(head)])
            pos += len(head)
            iov.append(stored[:bulk])
            tail = len(stored) - bulk + pad
            stage[pos : pos + len(stored) - bulk] = stored[bulk:]
            stage[pos + len(stored) - bulk : pos + tail] = self._zeros[:pad]
            iov.append(stage[pos : pos + tail])
            pos += tail
        self.fs.pwritev_all(seg.dfd, [v for v in iov if len(v)], at)

    # ----------------------------------------------------------------- read

    def read_head_and_payload(self, seg: Segment, offset: int, payload_offset: int,
                              stored_len: int) -> tuple[bytes, bytes]:
        """Buffered read of the head (``payload_offset`` bytes) and stored payload."""
        head = self.fs.pread(seg.fd, payload_offset, offset)
        stored = self.fs.pread(seg.fd, stored_len, offset + payload_offset) if stored_len else b""
        if len(head) != payload_offset or len(stored) != stored_len:
            raise ShortRead(len(head) + len(stored), payload_offset + stored_len)
        return head, stored

    def read_into(self, seg: Segment, offset: int, payload_offset: int, dst: memoryview,
                  direct: bool) -> memoryview:
        """Read a record's head and its (uncompressed) payload into ``dst``; returns the head."""
        n = len(dst)
        if direct and seg.dfd is not None and dio_aligned(dst):
            bulk = n // DIO_ALIGN * DIO_ALIGN
            rest = n - bulk
            rest_al = (rest + DIO_ALIGN - 1) // DIO_ALIGN * DIO_ALIGN
            scratch = self._read_buffer(payload_offset + rest_al)
            head, tail = scratch[:payload_offset], scratch[payload_offset:]
            want = payload_offset + bulk + rest_al
            got = self.fs.preadv_all(seg.dfd, [head, dst[:bulk], tail], offset)
            if got != want:
                raise ShortRead(got, want)
            if rest:
                dst[bulk:] = tail[:rest]
            return head
        head = bytearray(payload_offset)
        got = self.fs.preadv_all(seg.fd, [head, dst], offset)
        if got != payload_offset + n:
            raise ShortRead(got, payload_offset + n)
        return memoryview(head)
