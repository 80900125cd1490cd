"""What the SSD tier's parts share: its health, its I/O choices, its counters, its pool.

``SSDTier`` owns one of each and hands them to its ``RecordWriter`` and
``RecordReader`` explicitly (no shared private attributes):

* ``TierHealth``: closed / degraded / durability lost, and the one place a
  fault is logged (once) and counted;
* ``DirectIO``: the payload size from which O_DIRECT is used (None: never);
  switched off for good when the filesystem refuses it;
* ``TierCounters``: bytes in and out, evictions, checksum errors (under a lock);
* ``IOPool``: the helper threads of ``write_many`` / ``read_many_into``, made on first use.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from kvstore.errors import StorageError

log = logging.getLogger("kvstore.ssd")


class TierHealth:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.closed = False
        self.degraded = False
        self.durability_lost = False  # an fsync failed: only a reopen can promise durability
        self.errors = 0
        self._lock = threading.Lock()

    def degrade(self, reason: str) -> None:
        """Count a fault and refuse writes from now on (logged the first time)."""
        with self._lock:
            self.errors += 1
            first = not self.degraded
            self.degraded = True
        if first:
            log.error("ssd: tier %s degraded: %s", self.directory, reason)

    def count_error(self) -> None:
        """A fault that does not degrade the tier (a corrupt record)."""
        with self._lock:
            self.errors += 1

    def check_open(self) -> None:
        if self.closed:
            raise StorageError("ssd: tier is closed")

    def check_writable(self) -> None:
        self.check_open()
        if self.degraded:
            raise StorageError("ssd: tier is degraded")


class DirectIO:
    """O_DIRECT for payloads of ``min_bytes`` and up; ``min_bytes`` None: never."""

    def __init__(self, min_bytes: int | None) -> None:
        self.min_bytes = min_bytes

    def wanted(self, nbytes: int) -> bool:
        return self.min_bytes is not None and nbytes >= self.min_bytes

    def refuse(self) -> None:
        """The filesystem refused O_DIRECT: buffered I/O from now on."""
        self.min_bytes = None


class TierCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_in = self.bytes_out = self.evictions = 0

    def add(self, bytes_in: int = 0, bytes_out: int = 0, evictions: int = 0) -> None:
        with self._lock:
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out
            self.evictions += evictions


class IOPool:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ssd-io")
            return self._pool

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
