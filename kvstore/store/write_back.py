"""WriteBack: the store's write-back worker to the SSD tier (queues, threads, degradation).

The store never does SSD I/O under its lock. Writes and removals go through
``threads`` FIFO queues, partitioned by block key so the jobs of one key run
in order (a removal queued before a re-put's write runs first)::

    evict/flush ──(store lock)──> job(seq) ──> outbox ──(lock let go: dispatch)──>
                                 queue[key % n] ──> worker: ssd.write_many / ssd.remove
             WriteBackEvents.written / failed / finished  <──────────┘

The worker reports through ``WriteBackEvents``, a typed set of callbacks the
store gives it; it never touches the store's state.

* A demoted block's bytes are *staged* (copied out of the arena so its slot
  can be reused at once); ``staged_bytes`` is bounded by ``buffer_bytes``
  (``can_stage``): the store stops choosing dirty victims at the bound and
  waits for the workers or drops leaf tails instead. A job's staging room is
  given back when the job finishes, before ``finished`` is called.
* ``last_seq`` / ``done_up_to``: a flush queues its writes, then waits until
  every job up to its own sequence number has finished.
* Any ``StorageError``/``OSError`` from a write marks the tier *degraded*
  (logged once): later writes are refused, eviction drops instead of
  demoting, reads of what is on disk keep working while they can.
* The SSD tier's eviction callback (whole segments freed) only records the
  lost keys; the worker hands them over in ``finished`` after the write
  returns, so no store callback ever runs under the SSD tier's lock.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from kvstore.errors import CapacityError, NotFound, StorageError
from kvstore.ssd.record import SSDLocation, SSDRecordHeader
from kvstore.ssd.tier import SSDTier
from kvstore.store_api import TierStats

log = logging.getLogger("kvstore.ssd")

# what a read of a location may raise: corrupt record, failing disk, freed segment (a miss)
READ_ERRORS = (StorageError, OSError, NotFound)

Key = tuple[bytes, bytes]  # (namespace, block key)
BATCH_JOBS = 64  # consecutive write jobs a worker hands to ``write_many`` at once


@dataclass
class Job:
    seq: int
    kind: Literal["write", "remove"]
    fp: bytes
    key: bytes
    state: Any = None  # the store's BlockState the write is for
    header: SSDRecordHeader | None = None
    staged: bytes | None = None  # payload of a demoted block (else: ask ``events.payload``)
    pin: Any = None  # the store's tree node locked while the job reads an arena slot


@dataclass(frozen=True)
class WriteBackEvents:
    """What the worker tells the store (each call takes the store's lock briefly)."""

    payload: Callable[[Job], Any]  # bytes of a job without staged bytes; None: block gone
    written: Callable[[Job, SSDLocation], bool]  # False: the block no longer wants the copy
    failed: Callable[[Job, bool], None]  # not written; the bool: its bytes may be lost
    finished: Callable[[Job, list[Key]], None]  # job done; keys the SSD tier evicted meanwhile


class WriteBack:
    def __init__(self, tier: SSDTier, events: WriteBackEvents, threads: int = 1,
                 buffer_bytes: int = 256 << 20, gather: bool = False):
        self.tier = tier
        self.buffer_bytes = buffer_bytes
        self.write_errors = self.removes = 0
        self._events = events
        self._lock = threading.Lock()  # staging, sequence numbers, pending jobs
        self._staged_bytes = 0
        self._seq = 0
        self._pending: set[int] = set()
        self._degraded = False
        self._evicted: list[Key] = []
        self._gather = gather  # jobs wait in ``_outbox`` for ``dispatch`` (the store's lock release)
        self._outbox: list[Job] = []
        self._evicted_lock = threading.Lock()
        self._queues = [queue.SimpleQueue() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._worker, args=(q,), name=f"kvstore-ssd-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        tier.set_eviction_callback(self._on_evicted)
        for t in self._threads:
            t.start()

    # -- state --------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        return self._degraded or self.tier.degraded

    @property
    def usable(self) -> bool:
        return not self.degraded

    @property
    def staged_bytes(self) -> int:
        return self._staged_bytes

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._pending)

    def can_stage(self, nbytes: int) -> bool:
        """Whether a demoted block of ``nbytes`` may be staged now (one always may)."""
        staged = self._staged_bytes
        return staged == 0 or staged + nbytes <= self.buffer_bytes

    @property
    def last_seq(self) -> int:
        return self._seq

    def done_up_to(self, seq: int) -> bool:
        """Whether every job with a sequence number up to ``seq`` has finished."""
        with self._lock:
            return not self._pending or min(self._pending) > seq

    def stats(self) -> TierStats:
        s = replace(self.tier.stats())
        s.degraded = self.degraded
        s.errors = max(s.errors, self.write_errors)
        return s

    # -- jobs -----------------------------------------------------------------------
    def write(self, fp: bytes, key: bytes, state, header: SSDRecordHeader,
              staged: bytes | None = None, pin=None) -> int:
        """Queue a write of ``staged`` (or of ``events.payload(job)``); returns its sequence number."""
        return self._enqueue(Job(0, "write", fp, key, state, header, staged, pin))

    def remove(self, fp: bytes, key: bytes) -> int:
        """Queue the removal of the SSD copy of a block."""
        return self._enqueue(Job(0, "remove", fp, key))

    def _enqueue(self, job: Job) -> int:
        with self._lock:
            self._seq += 1
            job.seq = self._seq
            if job.staged is not None:
                self._staged_bytes += len(job.staged)
            self._pending.add(job.seq)
            if self._gather:
                self._outbox.append(job)
                return job.seq
        self._queues[job.key[0] % len(self._queues)].put(job)
        return job.seq

    def dispatch(self) -> None:
        """Hand the jobs gathered since the last call to the workers, one batch per queue.

        The store calls it when it lets go of its lock, so the demotions and
        write-behind writes of one store call reach ``SSDTier.write_many``
        together. Order per key is kept: batches go out under ``_lock``.
        """
        if not self._outbox:
            return
        with self._lock:
            jobs, self._outbox = self._outbox, []
            batches: dict[int, list[Job]] = {}
            for job in jobs:
                batches.setdefault(job.key[0] % len(self._queues), []).append(job)
            for i, batch in batches.items():
                self._queues[i].put(batch)

    def read(self, loc: SSDLocation) -> bytes:
        return self.tier.read(loc)

    def read_many_into(self, locs: list[SSDLocation], outs: list) -> list[Exception | None]:
        """Read several payloads straight into ``outs`` (``SSDTier.read_many_into``): per
        location None or its error (an unexpected failure of the call fails every item)."""
        if not locs:
            return []
        try:
            return self.tier.read_many_into(locs, outs)
        except Exception as exc:
            return [exc] * len(locs)

    # -- worker -----------------------------------------------------------------------
    def _worker(self, q: queue.SimpleQueue) -> None:
        pending: collections.deque[Job] = collections.deque()
        stopping = False
        while True:
            if not pending and (stopping or not _take(q.get(), pending)):
                return
            job = pending.popleft()
            batch = [job]
            while job.kind == "write" and len(batch) < BATCH_JOBS:  # writes go out together
                if not pending:
                    if stopping:
                        break
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if not _take(item, pending):
                        stopping = True
                        break
                if pending[0].kind != "write":
                    break
                batch.append(pending.popleft())
            try:
                if job.kind == "write":
                    self._write_batch(batch)
                else:
                    self._remove(job)
            except Exception:  # pragma: no cover - a worker must never die
                log.exception("SSD job %s failed unexpectedly", job.kind)
            finally:
                for done in batch:
                    with self._lock:
                        if done.staged is not None:
                            self._staged_bytes -= len(done.staged)
                        self._pending.discard(done.seq)
                    self._events.finished(done, self._take_evicted())

    def _write_batch(self, jobs: list[Job]) -> None:
        """Write jobs through ``tier.write_many`` (one job: ``_write``)."""
        if len(jobs) == 1:
            self._write(jobs[0])
            return
        events = self._events
        if self.degraded:
            for job in jobs:
                events.failed(job, True)
            return
        ready, items = [], []
        for job in jobs:
            payload = job.staged if job.staged is not None else events.payload(job)
            if payload is None:  # block gone before its turn
                events.failed(job, False)
                continue
            ready.append(job)
            items.append((job.header, payload))
        if not items:
            return
        try:
            results = self.tier.write_many(items)
        except Exception as exc:  # pragma: no cover - write_many reports per item
            results = [exc] * len(items)
        for job, result in zip(ready, results):
            if isinstance(result, CapacityError):
                log.error("SSD write refused: %s", result)
                events.failed(job, True)
            elif isinstance(result, Exception):
                self.write_errors += 1
                if not self._degraded:
                    log.error("SSD tier degraded after a failed write: %s", result)
                self._degraded = True
                events.failed(job, True)
            elif not events.written(job, result):  # deleted or replaced meanwhile
                self._remove(job)

    def _write(self, job: Job) -> None:
        events = self._events
        if self.degraded:
            events.failed(job, True)
            return
        payload = job.staged if job.staged is not None else events.payload(job)
        if payload is None:  # block gone before its turn
            events.failed(job, False)
            return
        try:
            loc = self.tier.write(job.header, payload)
        except CapacityError as exc:  # this record can never fit: drop it, the disk is fine
            log.error("SSD write refused: %s", exc)
            events.failed(job, True)
            return
        except Exception as exc:
            self.write_errors += 1
            if not self._degraded:
                log.error("SSD tier degraded after a failed write: %s", exc)
            self._degraded = True
            events.failed(job, True)
            return
        if not events.written(job, loc):  # deleted or replaced meanwhile
            self._remove(job)

    def _remove(self, job: Job) -> None:
        if self.degraded:
            return  # the record stays until restart; the store no longer points at it
        try:
            self.tier.remove(job.fp, job.key)
            self.removes += 1
        except (StorageError, OSError, KeyError) as exc:
            log.warning("SSD remove failed: %s", exc)

    def _on_evicted(self, pairs: list[Key]) -> None:
        with self._evicted_lock:
            self._evicted.extend(pairs)

    def _take_evicted(self) -> list[Key]:
        with self._evicted_lock:
            out, self._evicted = self._evicted, []
        return out

    # -- lifecycle --------------------------------------------------------------------
    def reset_degraded(self) -> None:
        """Let an operator retry a degraded tier (after freeing space, replacing a disk)."""
        self.tier.reset_degraded()
        self._degraded = False

    def flush(self) -> None:
        """fsync what the workers wrote (``StorageError`` when the tier is degraded)."""
        if self.degraded:
            raise StorageError("SSD tier is degraded: blocks cannot be made durable")
        try:
            self.tier.flush()
        except (StorageError, OSError) as exc:
            self._degraded = True
            log.error("SSD tier degraded after a failed flush: %s", exc)
            raise StorageError(f"SSD flush failed: {exc}") from exc

    def stop(self) -> None:
        """Finish every queued job, then stop the threads."""
        self.dispatch()
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()


def _take(item, pending: collections.deque) -> bool:
    """Queue ``item`` (a job, or a dispatched batch) in ``pending``; False for the stop mark."""
    if item is None:
        return False
    if isinstance(item, list):
        pending.extend(item)
    else:
        pending.append(item)
    return True
