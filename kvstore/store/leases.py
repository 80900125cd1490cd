"""Leases and the copy paths of the TieredStore (mixin; see ``tiered_store``).

A lease pins a prefix by locking its deepest node in the namespace's tree
(which locks every ancestor): locked blocks are never evicted, demoted,
deleted or overwritten, so their arena slots can be copied outside the store
lock. ``put`` and ``get`` use the same mechanism internally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvstore.errors import InvalidArgument, NotFound
from kvstore.keys import ROOT_KEY, block_keys
from kvstore.store.block_state import BlockState, NamespaceState, new_meta
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.ssd_link import READ_ERRORS
from kvstore.store_api import Lease
from kvstore.tokens import as_tokens


@dataclass
class LeaseRecord:
    lease: Lease
    nst: NamespaceState
    node: object
    tier: MemoryTier
    tokens: np.ndarray | None = None
    extra: bytes = b""
    keys: list | None = None


class LeaseOps:
    # -- write leases -----------------------------------------------------------
    def lease_write(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        arr = as_tokens(tokens)
        with self._lock:
            bt = self._nst(ns).spec.block_tokens
        return self._lease_write(ns, arr[: len(arr) // bt * bt], extra, self.cpu).lease

    def _lease_write(self, ns: bytes, arr, extra: bytes, tier: MemoryTier) -> LeaseRecord:
        with self._lock:
            bt = self._nst(ns).spec.block_tokens
        keys = block_keys(arr, bt, extra)  # hashing outside the lock
        with self._lock:
            self._check_open()
            nst = self._nst(ns)
            m = self._match(nst, arr, extra, False)
            nst.tree.lock(m.node)
            slots = []
            try:
                for _ in range(len(m.blocks), len(keys)):
                    slot = self._alloc(tier, nst.spec.block_bytes)
                    if slot is None:
                        break
                    slots.append(slot)
            except BaseException:
                for slot in slots:
                    tier.free(slot)
                nst.tree.unlock(m.node)
                raise
            first = len(m.blocks)
            lease = Lease(next(self._lease_ids), ns, (first + len(slots)) * bt, slots, first, True)
            rec = LeaseRecord(lease, nst, m.node, tier, arr, extra, keys)
            self._leases[lease.lease_id] = rec
            return rec

    def commit_lease(self, lease_id: int) -> int:
        with self._lock:
            rec = self._leases.get(lease_id)
            if rec is None:
                raise NotFound(f"no lease {lease_id}")
            if not rec.lease.writable:
                raise InvalidArgument("commit of a read lease")
            del self._leases[lease_id]
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
                    self._install(rec.tier, nst, meta.key, meta.handle, slot)
                    rec.tier.stats.bytes_in += slot.length
                else:
                    rec.tier.free(slot)
            for meta in metas[:first]:  # the locked prefix cannot vanish; stay safe anyway
                if id(meta) in added:
                    self._lose(nst, meta.key)
            if self._lost:
                self._retry_lost()
            return self._match(nst, tokens, rec.extra, False).num_tokens

    def release(self, lease_id: int) -> None:
        with self._lock:
            rec = self._leases.pop(lease_id, None)
            if rec is None:
                return
            if rec.lease.writable:
                for slot in rec.lease.slots:
                    rec.tier.free(slot)
            rec.nst.tree.unlock(rec.node)
            if self._lost:
                self._retry_lost()

    # -- read leases ------------------------------------------------------------
    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            nst = self._nst(ns)
            m = self._match(nst, arr, extra, True)
            nst.tree.lock(m.node)
            blocks, fetch = m.blocks, []
            for i, meta in enumerate(blocks):
                st = meta.handle
                if st.tier is not None and st.tier is not self.cpu:  # GPU: move down now
                    if not self._to_cpu(nst, meta.key, st, st.tier.read(st.slot)):
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
                data[i] = src if staged else self.ssd.read(src)
            except READ_ERRORS:
                n, lost = i, meta.key
        with self._lock:
            for i, meta, _, _ in fetch:
                if i >= n:
                    break
                st = meta.handle
                if st.slot is None and not self._to_cpu(nst, meta.key, st, data[i]):
                    n = i
                    break
            self._count_read(nst, blocks[:n], len(arr) // nst.spec.block_tokens)
            fetched = {i for i, *_ in fetch}  # tier hits: memory-resident vs read from SSD
            self.cpu.stats.hits += sum(1 for i in range(n) if i not in fetched)
            self._ssd_hits += sum(1 for i, _, staged, _ in fetch if i < n and not staged)
            for meta in blocks[:n]:
                self.cpu.policy.on_access(nst.fp + meta.key)
            lease = Lease(next(self._lease_ids), ns, n * nst.spec.block_tokens,
                          [meta.handle.slot for meta in blocks[:n]], 0, False)
            self._leases[lease.lease_id] = LeaseRecord(lease, nst, m.node, self.cpu)
            if lost is not None:  # pinned by this lease: marked lost, removed on release
                self._lose(nst, lost)
            return lease

    def _to_cpu(self, nst, key, st: BlockState, data) -> bool:
        """Make block ``key`` CPU-resident from ``data`` (under the lock)."""
        slot = self._alloc(self.cpu, nst.spec.block_bytes)
        if slot is None:
            return False
        if st.slot is not None and st.tier is self.cpu:  # promoted meanwhile
            self.cpu.free(slot)
            return True
        self.cpu.write(slot, data)
        if st.slot is not None:
            self._uninstall(st, nst.fp + key)
        self._install(self.cpu, nst, key, st, slot)
        self.cpu.stats.promotions += 1
        return True

    # -- copies out -------------------------------------------------------------
    def _read_prefix(self, ns: bytes, tokens, extra: bytes, sink, limit=None) -> int:
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            nst = self._nst(ns)
            m = self._match(nst, arr, extra, True)
            blocks = m.blocks[:limit]
            nst.tree.lock(m.node)
            plan = []
            for meta in blocks:
                st = meta.handle
                if st.slot is not None:
                    st.tier.policy.on_access(nst.fp + meta.key)
                    st.tier.stats.hits += 1
                    st.tier.stats.bytes_out += meta.size
                    if st.tier is self.cpu:
                        plan.append(("slot", st.slot))
                    else:  # GPU slots are only touched under the lock
                        plan.append(("bytes", st.tier.read(st.slot)))
                elif st.staged is not None:
                    plan.append(("bytes", st.staged))
                else:
                    plan.append(("ssd", st.ssd))
        n, lost, promote = 0, None, []
        try:
            for i, (kind, src) in enumerate(plan):
                if kind == "bytes":
                    sink(i, src)
                elif kind == "slot":
                    sink(i, self.cpu.view(src))
                else:
                    try:
                        data = self.ssd.read(src)
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
                    self._lose(nst, lost)
                if self._lost:
                    self._retry_lost()
                self._count_read(nst, blocks[:n], len(arr) // nst.spec.block_tokens)
                self._ssd_hits += len(promote)
                if self.config.promote_on_get:
                    for meta, data in promote:
                        self._promotions.put((nst.fp, meta.key, meta.handle, data))
        return n * nst.spec.block_tokens

    def _count_read(self, nst: NamespaceState, served, requested: int) -> None:
        nst.hits += len(served)
        nst.misses += max(0, requested - len(served))
