"""WriteBackReports: the SSD write-back's jobs fed from, and reported back to, the ``TierSet``.

``write_dirty`` queues an SSD write of every dirty resident block (write-behind
and flush); the other methods are the ``WriteBackEvents`` the worker calls
(each under the store lock): the payload of a job, and what a written, failed
or finished job changes in the blocks' states. A job whose block was deleted
or replaced meanwhile changes nothing (``_job_alive``).
"""

from __future__ import annotations

from kvstore.ssd.record import SSDLocation
from kvstore.store.block_state import policy_key
from kvstore.store.tier_set import TierSet
from kvstore.store.write_back import Job, Key


class WriteBackReports:
    def __init__(self, tiers: TierSet):
        self._tiers = tiers
        self._ns = tiers.namespaces

    def write_dirty(self) -> None:
        """Queue an SSD write of every dirty resident block (each pinned until written)."""
        for pk in list(self._tiers.dirty):
            nst, key, meta = self._tiers.lookup(pk)
            if not self._tiers.writeback.tier.accepts(nst.spec.tenant, meta.size):
                continue  # no SSD for this tenant (its quota): it stays in memory only
            st = meta.handle
            node = nst.tree.node_of(key)
            nst.tree.lock(node)
            st.writing = True
            del self._tiers.dirty[pk]
            self._tiers.writeback.write(nst.fp, key, st, self._tiers.header(nst, key, st), pin=node)

    def _job_alive(self, job: Job) -> bool:
        nst = self._ns.get(job.fp)
        return nst is not None and nst.state(job.key) is job.state

    def job_payload(self, job: Job):
        """Bytes to write for a flush job: a view of the pinned arena slot (None: gone)."""
        st = job.state
        if not self._job_alive(job) or st.slot is None:
            return None
        if st.tier is self._tiers.cpu:
            return self._tiers.cpu.view(st.slot)  # pinned by job.pin until _settle
        return st.tier.read(st.slot)  # GPU slots are read under the lock

    def _settle(self, job: Job) -> None:
        """Release what a job held from the store (idempotent): staged bytes, write flag, pin."""
        st = job.state
        if st is not None:
            if job.staged is not None and st.staged is job.staged:
                st.staged = None
            st.writing = False
        if job.pin is not None:
            self._ns[job.fp].tree.unlock(job.pin)
            job.pin = None

    def job_written(self, job: Job, loc: SSDLocation) -> bool:
        alive = self._job_alive(job)
        self._settle(job)
        if alive:
            job.state.ssd = loc
            self._tiers.dirty.pop(policy_key(job.fp, job.key), None)
        return alive

    def job_failed(self, job: Job, lost: bool) -> None:
        alive = self._job_alive(job)
        self._settle(job)
        st = job.state
        if not alive or st.ssd is not None:
            return
        if st.slot is not None:
            self._tiers.dirty[policy_key(job.fp, job.key)] = None  # still only in memory
        elif lost:
            self._tiers.lose(self._ns[job.fp], job.key)

    def job_finished(self, job: Job, evicted: list[Key]) -> None:
        if job.kind == "write":
            self._settle(job)
        if evicted:
            self._tiers.forget_ssd_copies(evicted)
        if self._tiers.lost:
            self._tiers.retry_lost()
        self._tiers.cond.notify_all()
