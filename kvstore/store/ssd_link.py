"""SSDLink: the store's hook to the SSD tier (write-back queue, workers, degradation).

The store never does SSD I/O under its lock. Writes and removals go through
``demotion_threads`` FIFO queues, partitioned by block key so the jobs of one
key run in order (a removal queued before a re-put's write runs first)::

    put/evict ──(store lock)──> job(seq) ──> queue[hash(key) % n] ──> worker
                                                            ssd.write / ssd.remove
                                 store._on_written / _on_write_failed  <──┘

* A demoted block's bytes are *staged* (copied out of the arena so its slot
  can be reused at once); ``staged_bytes`` is bounded by the config's
  ``demotion_buffer_bytes``; the store stops choosing dirty victims at the
  bound and waits for the workers or drops leaf tails instead.
* A flush enqueues every dirty resident block (pinned while queued) and waits
  until every job with a sequence number up to its own has finished.
* Any ``StorageError``/``OSError`` from a write marks the tier *degraded*
  (logged once): later writes are refused, eviction drops instead of
  demoting, reads of what is on disk keep working while they can.
* The SSD tier's eviction callback (whole segments freed) only records the
  lost keys; the worker hands them to the store after the write returns, so
  no callback ever runs under either lock.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from kvstore.errors import CapacityError, NotFound, StorageError
from kvstore.ssd.record import SSDRecordHeader

log = logging.getLogger("kvstore.ssd")

# what a read of a location may raise: corrupt record, failing disk, freed segment (a miss)
READ_ERRORS = (StorageError, OSError, NotFound)

@dataclass
class Job:
    seq: int
    kind: str  # "write" | "remove"
    fp: bytes
    key: bytes
    state: Any = None  # the BlockState the write is for
    header: Any = None
    staged: bytes | None = None  # payload of a demoted block
    pin: Any = None  # tree node locked while the job reads an arena slot


class SSDLink:
    def __init__(self, ssd, store, threads: int = 1, buffer_bytes: int = 256 << 20):
        self.ssd = ssd
        self._store = store
        self.buffer_bytes = buffer_bytes
        self.staged_bytes = 0
        self._degraded = False
        self._seq = 0
        self.pending: set[int] = set()
        self._evicted: list[tuple[bytes, bytes]] = []
        self._evicted_lock = threading.Lock()
        self.writes = self.write_errors = self.removes = 0
        self._queues = [queue.SimpleQueue() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._worker, args=(q,), name=f"kvstore-ssd-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        ssd.set_eviction_callback(self._on_evicted)
        for t in self._threads:
            t.start()

    @property
    def degraded(self) -> bool:
        return self._degraded or bool(getattr(self.ssd, "degraded", False))

    @property
    def usable(self) -> bool:
        return not self.degraded

    def can_stage(self, nbytes: int) -> bool:
        return self.staged_bytes == 0 or self.staged_bytes + nbytes <= self.buffer_bytes

    # -- called under the store lock ------------------------------------------
    def enqueue(self, kind: str, fp: bytes, key: bytes, **kw) -> int:
        self._seq += 1
        job = Job(self._seq, kind, fp, key, **kw)
        if job.staged is not None:
            self.staged_bytes += len(job.staged)
        self.pending.add(job.seq)
        self._queues[key[0] % len(self._queues)].put(job)
        return job.seq

    @property
    def last_seq(self) -> int:
        return self._seq

    def done_up_to(self, seq: int) -> bool:
        return not self.pending or min(self.pending) > seq

    def header(self, fp, key, parent, tokens, extra, codec, payload_len):
        return SSDRecordHeader(fp, key, parent, tokens, extra, codec, payload_len)

    # -- worker ---------------------------------------------------------------
    def _worker(self, q: queue.SimpleQueue) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            try:
                if job.kind == "write":
                    self._write(job)
                else:
                    self._remove(job)
            except Exception:  # pragma: no cover - a worker must never die
                log.exception("SSD job %s failed unexpectedly", job.kind)
            finally:
                self._store._job_done(job, self._take_evicted())

    def _write(self, job: Job) -> None:
        store = self._store
        if self.degraded:
            store._on_write_failed(job)
            return
        payload = job.staged if job.staged is not None else store._job_payload(job)
        if payload is None:  # block gone before its turn
            store._on_write_failed(job, lost=False)
            return
        try:
            loc = self.ssd.write(job.header, payload)
        except CapacityError as exc:  # this record can never fit: drop it, the disk is fine
            log.error("SSD write refused: %s", exc)
            store._on_write_failed(job)
            return
        except Exception as exc:
            self.write_errors += 1
            if not self._degraded:
                log.error("SSD tier degraded after a failed write: %s", exc)
            self._degraded = True
            store._on_write_failed(job)
            return
        self.writes += 1
        if not store._on_written(job, loc):  # deleted or replaced meanwhile
            self._remove(job)

    def _remove(self, job: Job) -> None:
        if self.degraded:
            return  # the record stays until restart; the store no longer points at it
        try:
            self.ssd.remove(job.fp, job.key)
            self.removes += 1
        except (StorageError, OSError, KeyError) as exc:
            log.warning("SSD remove failed: %s", exc)

    def read(self, loc) -> bytes:
        return self.ssd.read(loc)

    def _on_evicted(self, pairs) -> None:
        with self._evicted_lock:
            self._evicted.extend(pairs)

    def _take_evicted(self) -> list:
        with self._evicted_lock:
            out, self._evicted = self._evicted, []
        return out

    def take_evicted(self) -> list:
        return self._take_evicted()

    # -- lifecycle --------------------------------------------------------------
    def reset_degraded(self) -> None:
        """Let an operator retry a degraded tier (after freeing space, replacing a disk)."""
        reset = getattr(self.ssd, "reset_degraded", None)
        if reset is not None:
            reset()
        self._degraded = False

    def flush(self) -> None:
        if self.degraded:
            raise StorageError("SSD tier is degraded: blocks cannot be made durable")
        try:
            self.ssd.flush()
        except (StorageError, OSError) as exc:
            self._degraded = True
            log.error("SSD tier degraded after a failed flush: %s", exc)
            raise StorageError(f"SSD flush failed: {exc}") from exc

    def stop(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()

    def close(self) -> None:
        self.stop()
        self.ssd.close()
