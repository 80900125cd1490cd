"""Background tier movement of the TieredStore (mixin): SSD job callbacks, promotion.

``SSDLink`` workers call ``_job_payload`` / ``_on_written`` /
``_on_write_failed`` / ``_job_done`` (each takes the store lock briefly; the
SSD write itself runs without it). The promotion thread copies SSD hits back
into the CPU arena.
"""

from __future__ import annotations

import logging

log = logging.getLogger("kvstore.store")


class IOOps:
    # -- SSD writer callbacks ------------------------------------------------------
    def _job_alive(self, job) -> bool:
        nst = self._ns.get(job.fp)
        return nst is not None and nst.state(job.key) is job.state

    def _job_payload(self, job):
        """Bytes to write for a flush job: a view of the pinned arena slot."""
        with self._lock:
            st = job.state
            if not self._job_alive(job) or st.slot is None:
                return None
            if st.tier is self.cpu:
                return self.cpu.view(st.slot)  # pinned by job.pin until _settle
            return st.tier.read(st.slot)  # GPU slots are read under the lock

    def _settle(self, job) -> None:
        """Release what a job held (idempotent): staging room, write flag, pin."""
        st = job.state
        if job.staged is not None:
            self.ssd.staged_bytes -= len(job.staged)
            if st.staged is job.staged:
                st.staged = None
            job.staged = None
        if st is not None:
            st.writing = False
        if job.pin is not None:
            self._ns[job.fp].tree.unlock(job.pin)
            job.pin = None

    def _on_written(self, job, loc) -> bool:
        with self._lock:
            alive = self._job_alive(job)
            self._settle(job)
            if alive:
                job.state.ssd = loc
                self._dirty.pop(job.fp + job.key, None)
            return alive

    def _on_write_failed(self, job, lost: bool = True) -> None:
        with self._lock:
            alive = self._job_alive(job)
            self._settle(job)
            st = job.state
            if not alive or st.ssd is not None:
                return
            if st.slot is not None:
                self._dirty[job.fp + job.key] = None  # still only in memory
            elif lost:
                self._lose(self._ns[job.fp], job.key)

    def _job_done(self, job, evicted) -> None:
        with self._lock:
            if job.kind == "write":
                self._settle(job)
            if evicted:
                self._apply_ssd_evictions(evicted)
            self.ssd.pending.discard(job.seq)
            if self._lost:
                self._retry_lost()
            self._cond.notify_all()

    # -- promotion -------------------------------------------------------------
    def _promote_loop(self) -> None:
        while True:
            item = self._promotions.get()
            if item is None:
                return
            try:
                self._promote(*item)
            except Exception:  # pragma: no cover - never let the thread die
                log.exception("promotion failed")

    def _promote(self, fp: bytes, key: bytes, st, data: bytes) -> None:
        with self._lock:
            nst = self._ns.get(fp)
            if self._closed or nst is None or nst.state(key) is not st:
                return
            if st.slot is not None or st.lost:
                return
            self._to_cpu(nst, key, st, data)
