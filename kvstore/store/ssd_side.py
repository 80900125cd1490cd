"""SSDSide: the SSD tier's parts inside the store, opened and closed together.

* the SSD tier: a ``TenantSSD``, one ``SSDTier`` per tenant (``StoreConfig.ssd_factory``,
  or the real one), each capped at its tenant's SSD quota;
* ``WriteBack``: its writer threads. Jobs queued under the store lock (the
  demotions and write-behind writes of one call) wait in its outbox and go to
  the workers as one batch when the lock is let go (``StoreLock.on_release``),
  so they reach ``SSDTier.write_many`` together;
* ``WriteBackReports``: the worker's reports, each applied under the store lock;
* the recovery of the trees from the tier's records at open (``rebuild_from_ssd``);
* ``ManifestWriter``: the namespace registrations, batched off the event loop.

``flush`` and ``wait_writes`` wait for the writer on the store's condition;
``close`` stops the manifest writer and the writer threads (staged demotions
reach the disk), then fsyncs and closes the tier.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kvstore.errors import StorageError
from kvstore.ssd.tier import SSDTier
from kvstore.store.config import StoreConfig
from kvstore.store.manifest_writer import ManifestWriter
from kvstore.store.quotas import Quotas
from kvstore.store.rebuild import rebuild_from_ssd
from kvstore.store.store_lock import StoreLock
from kvstore.store.tenant_ssd import TenantSSD
from kvstore.store.tier_set import TierSet
from kvstore.store.write_back import WriteBack, WriteBackEvents
from kvstore.store.write_back_reports import WriteBackReports

log = logging.getLogger("kvstore.store")


def _default_ssd_factory(directory, capacity_bytes, segment_bytes, compression) -> SSDTier:
    return SSDTier(directory, capacity_bytes, segment_bytes=segment_bytes, compression=compression)


class SSDSide:
    def __init__(self, config: StoreConfig, lock: StoreLock, cond: threading.Condition,
                 tiers: TierSet, manifest_snapshot: Callable[[], dict], quotas: Quotas,
                 tenant_of: Callable[[bytes], str]):
        self._lock, self._cond = lock, cond
        # one segment log per tenant, each capped at its SSD quota (tenant_ssd)
        ssd = TenantSSD(config.ssd_dir, config.ssd_bytes, config.segment_bytes,
                        config.ssd_compression, config.ssd_factory or _default_ssd_factory,
                        quotas, tenant_of)
        self.reports = reports = WriteBackReports(tiers)
        events = WriteBackEvents(
            payload=self._locked(reports.job_payload), written=self._locked(reports.job_written),
            failed=self._locked(reports.job_failed), finished=self._locked(reports.job_finished),
        )
        self.writeback = tiers.writeback = WriteBack(
            ssd, events, config.demotion_threads, config.demotion_buffer_bytes, gather=True)
        lock.on_release(self.writeback.dispatch)
        ns = tiers.namespaces
        try:
            with lock:
                rebuild_from_ssd(ssd, ns, self.writeback.remove)
                blocks = sum(len(nst.tree) for nst in ns.values())
        except BaseException:
            self.writeback.stop()
            ssd.close()
            raise
        log.info("recovered %d blocks in %d namespaces from the SSD tier at %s",
                 blocks, len(ns), config.ssd_dir)
        self.manifest = ManifestWriter(manifest_snapshot, ssd.save_namespaces)

    def _locked(self, fn):
        """``fn`` run under the store lock (the write-back worker's callbacks)."""
        def call(*args):
            with self._lock:
                return fn(*args)
        return call

    def flush(self, check_open: Callable[[], None]) -> None:
        """Write every dirty block and fsync (the store's ``flush``)."""
        with self._lock:
            check_open()
            self.reports.write_dirty()
            self._wait_jobs(self.writeback.last_seq)
        self.writeback.flush()

    def wait_writes(self) -> None:
        """Return once every SSD write and removal queued before the call has finished."""
        with self._lock:
            self._wait_jobs(self.writeback.last_seq)

    def _wait_jobs(self, seq: int) -> None:
        while not self.writeback.done_up_to(seq):
            self._cond.wait()  # lets go of the lock: the gathered jobs are dispatched

    def close(self) -> None:
        self.manifest.close()
        wb = self.writeback
        wb.stop()  # drains the queues: staged demotions reach the disk
        try:
            if wb.usable:
                wb.tier.flush()
        except (StorageError, OSError) as exc:
            log.error("SSD flush on close failed: %s", exc)
        wb.tier.close()
