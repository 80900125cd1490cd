"""DataPath: how blocks enter and leave the memory tiers, under the store lock.

The store's data calls end here (``TieredStore`` keeps the API, the parts and
their lifetimes)::

    write_lease ─> lock the matched path, allocate slots      [lock]
    commit      ─> insert into the tree, install the slots    [lock]
    read_lease  ─> pin the prefix in the CPU arena; GPU and SSD blocks move
                   to the CPU first (SSD reads outside the lock)
    read_prefix ─> plan under the lock, copy out without it, then unlock,
                   record lost blocks and queue SSD hits for promotion

Every path that copies locks the path in the tree first, so the blocks it
touches are never evicted, demoted or overwritten meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kvstore.errors import Draining, InvalidArgument, QuotaExceeded
from kvstore.keys import ROOT_KEY, block_keys
from kvstore.store.block_state import BlockState, NamespaceState, new_meta, policy_key
from kvstore.store.config import StoreConfig
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.lease_table import LeaseRecord, LeaseTable
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.namespace_table import NamespaceTable
from kvstore.store.promotion import Promoter, Promotion
from kvstore.store.read_counters import ReadCounters
from kvstore.store.tier_set import TierSet
from kvstore.store.write_back import READ_ERRORS, WriteBack
from kvstore.store_api import Lease
from kvstore.tokens import as_tokens


class DataPath:
    def __init__(self, lock: threading.RLock, namespaces: NamespaceTable, tiers: TierSet,
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
        self._writeback: WriteBack | None = None  # set once the SSD tier is open
        self._promoter: Promoter | None = None
        self.counts = ReadCounters(tiers.tiers, config.ssd_enabled)  # hits, misses, bytes served

    def attach(self, writeback: WriteBack | None, promoter: Promoter | None) -> None:
        self._writeback, self._promoter = writeback, promoter

    def _check_open(self) -> None:
        if self._is_closed():
            raise InvalidArgument("store is closed")

    def match(self, nst: NamespaceState, tokens, extra: bytes, touch: bool):
        """The cached prefix, cut before the first block whose bytes are lost."""
        m = nst.tree.match(tokens, extra, touch=touch)
        if self._tiers.lost:
            for i, meta in enumerate(m.blocks):
                if meta.handle.lost:
                    del m.blocks[i:]
                    m.num_tokens = i * nst.spec.block_tokens
                    break
        return m

    def write_lease(self, ns: bytes, arr, extra: bytes, tier: MemoryTier) -> LeaseRecord:
        with self._lock:
            if self._read_only():
                raise Draining("the store is read-only: writes are refused, reads keep working")
            bt = self._namespaces.get(ns).spec.block_tokens
        keys = block_keys(arr, bt, extra)  # hashing outside the lock
        with self._lock:
            self._check_open()
            self.expire_write_leases()
            nst = self._namespaces.get(ns)
            m = self.match(nst, arr, extra, False)
            self._check_quota(tier, nst, len(keys) - len(m.blocks))
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
                                     True, arr, extra, keys)

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
            self.release(lease_id)
            self._leases.expired += 1
        return len(expired)

    def commit_lease(self, lease_id: int) -> int:
        with self._lock:
            if not self._leases.peek(lease_id).lease.writable:
                raise InvalidArgument("commit of a read lease")
            rec = self._leases.take(lease_id)
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
            return self.match(nst, tokens, rec.extra, False).num_tokens

    def release(self, lease_id: int) -> None:
        with self._lock:
            rec = self._leases.discard(lease_id)
            if rec is None:
                return
            if rec.lease.writable:
                for slot in rec.lease.slots:
                    rec.tier.free(slot)
            rec.nst.tree.unlock(rec.node)
            if self._tiers.lost:
                self._tiers.retry_lost()

    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        arr = as_tokens(tokens)
        cpu, tiers = self._cpu, self._tiers
        with self._lock:
            self._check_open()
            nst = self._namespaces.get(ns)
            m = self.match(nst, arr, extra, True)
            nst.tree.lock(m.node)
            blocks, fetch, sources = m.blocks, [], []
            for i, meta in enumerate(blocks):
                st = meta.handle
                sources.append(st.tier)  # where it was found (None: the SSD or its queue)
                if st.tier is not None and st.tier is not cpu:  # GPU: move down now
                    # one device-to-host copy of the slot's device view into the arena
                    if not tiers.to_cpu(nst, meta.key, st, st.tier.view(st.slot)):
                        del blocks[i:]
                        break
                elif st.slot is None:
                    staged = st.staged is not None
                    fetch.append((i, meta, staged, st.staged if staged else st.ssd))
        n, lost = len(blocks), None
        data = {}
        for i, meta, staged, src in fetch:  # SSD reads outside the lock (the path is locked)
            if i >= n:
                break
            try:
                data[i] = src if staged else self._writeback.read(src)
            except READ_ERRORS:
                n, lost = i, meta.key
        with self._lock:
            for i, meta, _, _ in fetch:
                if i >= n:
                    break
                st = meta.handle
                if st.slot is None and not tiers.to_cpu(nst, meta.key, st, data[i]):
                    n = i
                    break
            self.counts.read(nst, sources[:n], len(arr) // nst.spec.block_tokens)
            for meta in blocks[:n]:
                cpu.policy.on_access(policy_key(nst.fp, meta.key))
                cpu.settle(meta.handle.slot)  # a remote reader maps the arena directly
            rec = self._leases.open(nst, m.node, cpu, n * nst.spec.block_tokens,
                                    [meta.handle.slot for meta in blocks[:n]])
            if lost is not None:  # pinned by this lease: marked lost, removed on release
                tiers.lose(nst, lost)
            return rec.lease

    def read_prefix(self, ns: bytes, tokens, extra: bytes, open_sink) -> int:
        """Copy the cached prefix out through ``open_sink(nblocks)(i, data)``; returns tokens.

        ``open_sink`` is called once, outside the lock, when at least one block is cached.
        """
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            nst = self._namespaces.get(ns)
            m = self.match(nst, arr, extra, True)
            blocks = m.blocks
            nst.tree.lock(m.node)
            plan, sources = [], []
            for meta in blocks:
                st = meta.handle
                sources.append(st.tier if st.slot is not None else None)
                if st.slot is not None:
                    st.tier.policy.on_access(policy_key(nst.fp, meta.key))
                    if st.tier is self._cpu:
                        plan.append(("slot", st.slot))
                    else:  # GPU slots are only touched under the lock
                        plan.append(("bytes", st.tier.read(st.slot)))
                elif st.staged is not None:
                    plan.append(("bytes", st.staged))
                else:
                    plan.append(("ssd", st.ssd))
        n, lost, promote = 0, None, []
        try:
            sink = open_sink(len(plan)) if plan else None
            for i, (kind, src) in enumerate(plan):
                if kind == "bytes":
                    sink(i, src)
                elif kind == "slot":
                    sink(i, self._cpu.view(src))
                else:
                    try:
                        data = self._writeback.read(src)
                    except READ_ERRORS:
                        lost = blocks[i].key
                        break
                    sink(i, data)
                    promote.append((blocks[i], data))
                n += 1
        finally:
            with self._lock:
                nst.tree.unlock(m.node)
                if lost is not None:
                    self._tiers.lose(nst, lost)
                if self._tiers.lost:
                    self._tiers.retry_lost()
                self.counts.read(nst, sources[:n], len(arr) // nst.spec.block_tokens)
                if self.config.promote_on_get:
                    for meta, data in promote:
                        self._promoter.submit(Promotion(nst.fp, meta.key, meta.handle, data))
        return n * nst.spec.block_tokens

    def promote(self, item: Promotion) -> None:
        with self._lock:
            nst = self._namespaces.by_fp.get(item.fp)
            st = item.state
            if self._is_closed() or nst is None or nst.state(item.key) is not st:
                return
            if st.slot is not None or st.lost:
                return
            self._tiers.to_cpu(nst, item.key, st, item.data)

