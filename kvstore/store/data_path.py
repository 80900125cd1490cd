"""DataPath: how blocks enter the memory tiers, and how leases end; one lock acquisition a call.

The store's write calls end here (``TieredStore`` keeps the API, the parts
and their lifetimes; reads are ``ReadPath``'s)::

    write_lease ─> [lock] check, lock the matched path, allocate slots
                   (block keys are hashed before, without the lock)
    commit      ─> [lock] insert into the tree, install the slots
    commit_later─> the same, deferred to the lock's next holder (``put``: the
                   caller copied its payloads in and needs only the count)
    release     ─> deferred too (run at once when the caller holds the lock)

Every path that copies locks the path in the tree first, so the blocks it
touches are never evicted, demoted or overwritten meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

from kvstore.errors import Draining, InvalidArgument, QuotaExceeded
from kvstore.keys import ROOT_KEY, block_keys
from kvstore.store.block_state import BlockState, NamespaceState, new_meta
from kvstore.store.config import StoreConfig
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.lease_table import LeaseRecord, LeaseTable
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.namespace_table import NamespaceTable
from kvstore.store.read_path import match_prefix
from kvstore.store.store_lock import StoreLock
from kvstore.store.tenant_ssd import check_ssd_quota
from kvstore.store.tier_set import TierSet


class DataPath:
    def __init__(self, lock: StoreLock, namespaces: NamespaceTable, tiers: TierSet,
                 leases: LeaseTable, cpu: CPUTier, config: StoreConfig,
                 is_closed: Callable[[], bool], read_only: Callable[[], bool]):
        self._lock = lock
        self._namespaces = namespaces
        self._tiers = tiers
        self._leases = leases
        self._cpu = cpu
        self.config = config
        self._is_closed = is_closed
        self._read_only = read_only

    def _check_open(self) -> None:
        if self._is_closed():
            raise InvalidArgument("store is closed")

    def write_lease(self, ns: bytes, arr, extra: bytes, tier: MemoryTier,
                    expires: bool = True) -> LeaseRecord:
        """Lock the cached part of ``arr``'s path and allocate slots for the rest.

        ``expires=False``: no deadline (the store's own ``put``, which copies at once).
        """
        bt = self._namespaces.get(ns).spec.block_tokens  # a spec never changes: no lock
        keys = block_keys(arr, bt, extra)  # hashing outside the lock
        with self._lock:
            self._check_open()
            if self._read_only():
                raise Draining("the store is read-only: writes are refused, reads keep working")
            self.expire_write_leases()
            nst = self._namespaces.get(ns)
            m = match_prefix(self._tiers, nst, arr, extra, False)
            self._check_quota(tier, nst, len(keys) - len(m.blocks))
            wb = self._tiers.writeback
            check_ssd_quota(wb and wb.tier, nst.spec.tenant, len(keys), nst.spec.block_bytes)
            nst.tree.lock(m.node)
            slots = []
            try:
                for _ in range(len(m.blocks), len(keys)):
                    slot = self._tiers.alloc(tier, nst.spec.block_bytes, nst.spec.tenant)
                    if slot is None:
                        break
                    slots.append(slot)
            except BaseException:
                for slot in slots:
                    tier.free(slot)
                nst.tree.unlock(m.node)
                raise
            first = len(m.blocks)
            return self._leases.open(nst, m.node, tier, (first + len(slots)) * bt, slots, first,
                                     True, arr, extra, keys, expires)

    def make_room(self, ns: bytes, nblocks: int, tier: MemoryTier) -> int:
        """Evict ahead of the next write: free room for ``nblocks`` blocks of ``ns`` in
        ``tier`` (at most ``1 / config.evict_ahead_share`` of it: what evicting early may
        cost the hit rate), made now so that the write lease finds free slots instead of
        evicting inline. The room is made the way a write
        makes it (slots allocated by the tier's policy, fairness and quotas, then freed):
        the same blocks go as would go at that write, a little earlier. Returns the blocks
        of room now free there (0 on a closed or read-only store, or with the share 0)."""
        share = self.config.evict_ahead_share
        if share <= 0:
            return 0
        with self._lock:
            if self._is_closed() or self._read_only():
                return 0
            nst = self._namespaces.get(ns)
            size = nst.spec.block_bytes
            want = min(nblocks, tier.capacity_bytes // size // share)
            slots = []
            try:
                for _ in range(want):
                    slot = self._tiers.alloc(tier, size, nst.spec.tenant)
                    if slot is None:
                        break
                    slots.append(slot)
            finally:
                for slot in slots:
                    tier.free(slot)
            return len(slots)

    def _check_quota(self, tier: MemoryTier, nst: NamespaceState, nblocks: int) -> None:
        """A write that can never fit its tenant's CPU quota is refused (not half stored)."""
        if tier is not self._cpu or nblocks <= 0:
            return
        tenant, need = nst.spec.tenant, nblocks * nst.spec.block_bytes
        quota = self._cpu.allocator.quota_of(tenant)
        if need > quota:
            raise QuotaExceeded(
                f"a write of {need} bytes ({nblocks} blocks) exceeds tenant {tenant!r}'s CPU "
                f"quota of {quota} bytes")

    def expire_write_leases(self) -> int:
        """Take back the write leases past their deadline (a client that stalled); under the lock."""
        expired = self._leases.expired_writes()
        for lease_id in expired:
            self._release(lease_id)
            self._leases.expired += 1
        return len(expired)

    def commit_lease(self, lease_id: int) -> int:
        with self._lock:
            if not self._leases.peek(lease_id).lease.writable:
                raise InvalidArgument("commit of a read lease")
            return self._commit(self._leases.take(lease_id))

    def commit_later(self, rec: LeaseRecord) -> int:
        """Commit ``rec`` at the lock's next acquisition; returns the tokens it will cache."""
        self._lock.soon(lambda: self._commit(self._leases.take(rec.lease.lease_id)))
        return rec.lease.num_tokens

    def _commit(self, rec: LeaseRecord) -> int:
        nst, lease, bt = rec.nst, rec.lease, rec.nst.spec.block_tokens
        first, n = lease.first_block, lease.first_block + len(lease.slots)
        metas = []
        for i in range(n):
            st = BlockState(rec.keys[i - 1] if i else ROOT_KEY, rec.extra)
            metas.append(new_meta(rec.keys[i], nst.spec.block_bytes, st))
        tokens = rec.tokens[: n * bt]
        try:
            added = {id(m) for m in nst.tree.insert(tokens, metas, rec.extra).added}
        except BaseException:
            for slot in lease.slots:
                rec.tier.free(slot)
            raise
        finally:
            nst.tree.unlock(rec.node)
        for j, slot in enumerate(lease.slots):
            meta = metas[first + j]
            if id(meta) in added:
                self._tiers.install(rec.tier, nst, meta.key, meta.handle, slot)
                rec.tier.stats.bytes_in += slot.length
            else:
                rec.tier.free(slot)
        if self._tiers.lost:
            self._tiers.retry_lost()
        return match_prefix(self._tiers, nst, tokens, rec.extra, False).num_tokens

    def release(self, lease_id: int) -> None:
        """End a lease (nothing published); at once under the lock, else at its next holder."""
        self._lock.soon(lambda: self._release(lease_id))

    def _release(self, lease_id: int) -> None:
        rec = self._leases.discard(lease_id)
        if rec is None:
            return
        if rec.lease.writable:
            for slot in rec.lease.slots:
                rec.tier.free(slot)
        rec.nst.tree.unlock(rec.node)
        if self._tiers.lost:
            self._tiers.retry_lost()
