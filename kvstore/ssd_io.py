"""Moving one record's bytes to and from a segment file: buffered or O_DIRECT.

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

import numpy as np

from kvstore.errors import StorageError
from kvstore.ssd_fs import SSDFileSystem
from kvstore.ssd_segment import Segment

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


class RecordIO:
    """Record writes (called under the tier's append lock) and reads (any thread)."""

    def __init__(self, fs: SSDFileSystem, align: int) -> None:
        self.fs = fs
        self.align = align
        self._zeros = bytes(align)
        self._staging = AlignedBuffer()
        self._local = threading.local()

    def _read_buffer(self, n: int) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = AlignedBuffer()
        return buf.view(n)

    # ---------------------------------------------------------------- write

    def write(self, seg: Segment, at: int, head: bytes, stored, record_len: int,
              direct: bool) -> None:
        """Write a record: ``head`` (payload_offset bytes), ``stored``, zero padding."""
        stored = memoryview(stored).cast("B")
        pad = record_len - len(head) - len(stored)
        if not direct or seg.dfd is None:
            self.fs.pwritev_all(seg.fd, [head, stored, self._zeros[:pad]], at)
            return
        bulk = len(stored) // DIO_ALIGN * DIO_ALIGN if dio_aligned(stored) else 0
        rest = len(stored) - bulk
        stage = self._staging.view(len(head) + rest + pad)
        stage[: len(head)] = head
        stage[len(head) : len(head) + rest] = stored[bulk:]
        stage[len(head) + rest :] = bytes(pad)
        iov = [stage[: len(head)], stored[:bulk], stage[len(head) :]]
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
