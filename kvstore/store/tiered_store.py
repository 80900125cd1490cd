"""TieredStore: the ``ManagedStore`` over GPU (optional), CPU and SSD (optional) tiers.

One ``RadixTree`` per namespace indexes every cached block, whichever tier
holds it. One store lock guards all metadata; payload copies run outside it,
on blocks whose path is locked in the tree (pinned: never evicted, demoted or
overwritten while locked)::

    put ──> lease_write: lock path, allocate slots (evicting)   [lock]
            copy payloads into the slots                        [no lock]
            commit: insert into the tree, unlock                [lock]
    get ──> match + lock path                                   [lock]
            copy out: memory slot / staged bytes / SSD read     [no lock]
            unlock, queue promotions of SSD hits                [lock]

The store is built from parts that each own their state, and orchestrates
them under its lock:

* ``TierSet`` (``tier_set``): the memory tiers, their policies, and the rules
  that move blocks down (demotion, staging for the SSD writer) and up;
* ``WriteBack`` (``write_back``): the SSD writer threads, reporting through
  ``WriteBackEvents``;
* ``Promoter`` (``promotion``): copies SSD hits back into the CPU arena;
* ``LeaseTable`` (``lease_table``) and ``PinTable`` (``pin_table``).

Operator controls (``kvstore.store_api.ManagedStore``): ``set_read_only``
refuses writes (``put``, ``lease_write`` raise ``Draining``; reads, lookups,
deletes and flushes keep working); ``pin``/``unpin`` keep a prefix resident
within ``pin_budget_bytes``; ``evict`` drops a namespace or a prefix from
every tier (pinned and in-use blocks are skipped); ``set_policy`` replaces a
memory tier's eviction policy at run time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from kvstore.errors import (
    Draining,
    InvalidArgument,
    StorageError,
)
from kvstore.keys import ROOT_KEY, block_keys
from kvstore.namespace_spec import NamespaceSpec
from kvstore.ssd.tier import SSDTier
from kvstore.store.block_state import (
    BlockState,
    NamespaceState,
    new_meta,
    policy_key,
)
from kvstore.store.buffers import byte_view
from kvstore.store.config import StoreConfig
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.gpu_tier import GPUTier, cuda_available
from kvstore.store.lease_table import LeaseRecord, LeaseTable
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.namespace_table import NamespaceTable
from kvstore.store.operator_controls import OperatorControls
from kvstore.store.promotion import Promoter, Promotion
from kvstore.store.rebuild import rebuild_from_ssd
from kvstore.store.tier_set import TierSet
from kvstore.store.write_back import READ_ERRORS, WriteBack, WriteBackEvents
from kvstore.store_api import (
    Alloc,
    ArenaInfo,
    Capabilities,
    EvictResult,
    Lease,
    PinInfo,
    StoreStats,
    TierStats,
)
from kvstore.tokens import as_tokens

log = logging.getLogger("kvstore.store")


def _default_ssd_factory(directory, capacity_bytes, segment_bytes, compression) -> SSDTier:
    return SSDTier(directory, capacity_bytes, segment_bytes=segment_bytes, compression=compression)


class TieredStore:
    """The in-process store. ``TieredStore(StoreConfig(cpu_bytes="4GiB", ...))``."""

    capabilities = Capabilities(leases=True)
    zero_copy = True  # the former spelling of capabilities.leases (callers are moving)

    def __init__(self, config: StoreConfig | None = None, **settings):
        self.config = config = config if config is not None else StoreConfig(**settings)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._namespaces = NamespaceTable()
        self._ns = self._namespaces.by_fp  # what the tier set and the policies' views read
        self._leases = LeaseTable()
        self._closed = False
        self._ssd_hits = 0
        self._writeback: WriteBack | None = None
        self._promoter: Promoter | None = None
        memory: list[MemoryTier] = []
        if config.gpu_bytes and cuda_available():
            memory.append(GPUTier(config.gpu_bytes, 0, config.gpu_device))
        elif config.gpu_bytes:
            log.warning("gpu_bytes set but CUDA is not available: no GPU tier")
        self._cpu = CPUTier(config.cpu_bytes, config.cpu_page_bytes, config.arena_dir)
        memory.append(self._cpu)
        self._tiers = TierSet(memory, self._ns, self._cond, config.ssd_enabled)
        self._controls = OperatorControls(self, self._lock, self._namespaces, self._tiers, config)
        try:
            for tier in memory:
                self._tiers.set_policy(tier, config.make_policy(getattr(config, f"{tier.name}_policy")))
            if config.ssd_enabled:
                self._open_ssd()
            self._promoter = Promoter(self._promote)
        except BaseException:
            self.close()
            raise

    def _open_ssd(self) -> None:
        config = self.config
        factory = config.ssd_factory or _default_ssd_factory
        ssd = factory(config.ssd_dir, config.ssd_bytes, config.segment_bytes, config.ssd_compression)
        tiers = self._tiers
        events = WriteBackEvents(
            payload=self._locked(tiers.job_payload), written=self._locked(tiers.job_written),
            failed=self._locked(tiers.job_failed), finished=self._locked(tiers.job_finished),
        )
        self._writeback = tiers.writeback = WriteBack(
            ssd, events, config.demotion_threads, config.demotion_buffer_bytes)
        with self._lock:
            rebuild_from_ssd(ssd, self._ns, self._writeback.remove)

    def _locked(self, fn):
        """``fn`` run under the store lock (the write-back worker's callbacks)."""
        def call(*args):
            with self._lock:
                return fn(*args)
        return call

    # -- namespaces -------------------------------------------------------------
    def register(self, spec: NamespaceSpec) -> bytes:
        with self._lock:
            self._check_open()
            if not self._namespaces.register(spec, self._tiers.tiers):
                return spec.fingerprint
            manifest = self._namespaces.manifest()
        if self._writeback is not None:
            try:
                self._writeback.tier.save_namespaces(manifest)
            except (StorageError, OSError) as exc:
                log.error("cannot save the namespace manifest: %s", exc)
        return spec.fingerprint

    def namespaces(self) -> list[NamespaceSpec]:
        with self._lock:
            return self._namespaces.specs()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("store is closed")

    def _match(self, nst: NamespaceState, tokens, extra: bytes, touch: bool):
        """The cached prefix, cut before the first block whose bytes are lost."""
        m = nst.tree.match(tokens, extra, touch=touch)
        if self._tiers.lost:
            for i, meta in enumerate(m.blocks):
                if meta.handle.lost:
                    del m.blocks[i:]
                    m.num_tokens = i * nst.spec.block_tokens
                    break
        return m

    # -- the BlockStore API -----------------------------------------------------
    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            return self._match(self._namespaces.get(ns), arr, extra, False).num_tokens

    def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            bt = self._namespaces.get(ns).spec.block_tokens
        nblocks = min(len(arr) // bt, len(payloads))
        rec = self._lease_write(ns, arr[: nblocks * bt], extra, self._tiers.tiers[0])
        try:
            for j, slot in enumerate(rec.lease.slots):
                rec.tier.write(slot, payloads[rec.lease.first_block + j])
        except BaseException:
            self.release(rec.lease.lease_id)
            raise
        committed = self.commit_lease(rec.lease.lease_id)
        if nblocks == len(arr) // bt:
            return committed
        return self.lookup(ns, arr, extra)  # payloads for fewer blocks than tokens

    def get(self, ns: bytes, tokens, extra: bytes = b"") -> tuple[int, list[bytes]]:
        out: list[bytes] = []
        n = self._read_prefix(ns, tokens, extra, lambda nblocks: lambda i, data: out.append(bytes(data)))
        return n, out

    def get_into(self, ns: bytes, tokens, alloc: Alloc, extra: bytes = b""):
        """``(tokens, buffer)``: the cached prefix's blocks back to back in ``alloc(nbytes)``.

        ``alloc`` is called once, with the bytes of the whole cached prefix;
        ``(0, None)`` on a miss. A block that fails to read from the SSD ends
        the prefix there (fewer tokens than the buffer holds).
        """
        with self._lock:
            bb = self._namespaces.get(ns).spec.block_bytes
        got = []

        def open_sink(nblocks: int):
            buf = alloc(nblocks * bb)
            dst = byte_view(buf)
            got.append(buf)

            def sink(i, data):
                dst[i * bb : (i + 1) * bb] = data

            return sink

        n = self._read_prefix(ns, tokens, extra, open_sink)
        return (n, got[0]) if n else (0, None)

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            nst = self._namespaces.get(ns)
            m = nst.tree.match(arr, extra)
            return self._tiers.remove_subtree(nst, m.blocks[0].key) if m.blocks else 0

    def flush(self) -> None:
        """Make every block acknowledged before the call durable on SSD (no-op without SSD)."""
        wb = self._writeback
        if wb is None:
            return
        with self._lock:
            self._check_open()
            self._tiers.write_dirty()
            self._wait_jobs(wb.last_seq)
        wb.flush()

    def wait_writes(self) -> None:
        """Return once every SSD write and removal queued before the call has finished."""
        if self._writeback is not None:
            with self._lock:
                self._wait_jobs(self._writeback.last_seq)

    def _wait_jobs(self, seq: int) -> None:
        while not self._writeback.done_up_to(seq):
            self._cond.wait()

    def stats(self) -> StoreStats:
        with self._lock:
            tiers = self._tiers.stats()
            if self._writeback is not None:
                s = self._writeback.stats()
                s.hits = max(s.hits, self._ssd_hits)
                tiers.append(s)
            return StoreStats(tiers, self._namespaces.stats())

    def tier_stats(self, name: str) -> TierStats:
        return next(t for t in self.stats().tiers if t.name == name)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            wb = self._writeback
            persist = self.config.persist_on_close and wb is not None
        if persist and wb.usable:
            try:
                self.flush()
            except StorageError as exc:
                log.error("flush on close failed: %s", exc)
        with self._lock:
            self._closed = True
        if self._promoter is not None:
            self._promoter.close()
        if wb is not None:
            wb.stop()  # drains the queues: staged demotions reach the disk
            try:
                if wb.usable:
                    wb.tier.flush()
            except (StorageError, OSError) as exc:
                log.error("SSD flush on close failed: %s", exc)
            wb.tier.close()
        for tier in self._tiers.tiers:
            tier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- leases (LeasingStore) --------------------------------------------------
    def arena(self) -> ArenaInfo:
        return self._cpu.info()

    def read_slot(self, slot) -> memoryview:
        return self._cpu.view(slot)

    @property
    def lease_count(self) -> int:
        """Leases open now (pins hold one each)."""
        with self._lock:
            return len(self._leases)

    def lease_write(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        arr = as_tokens(tokens)
        with self._lock:
            bt = self._namespaces.get(ns).spec.block_tokens
        return self._lease_write(ns, arr[: len(arr) // bt * bt], extra, self._cpu).lease

    def _lease_write(self, ns: bytes, arr, extra: bytes, tier: MemoryTier) -> LeaseRecord:
        with self._lock:
            if self._controls.read_only:
                raise Draining("the store is read-only: writes are refused, reads keep working")
            bt = self._namespaces.get(ns).spec.block_tokens
        keys = block_keys(arr, bt, extra)  # hashing outside the lock
        with self._lock:
            self._check_open()
            nst = self._namespaces.get(ns)
            m = self._match(nst, arr, extra, False)
            nst.tree.lock(m.node)
            slots = []
            try:
                for _ in range(len(m.blocks), len(keys)):
                    slot = self._tiers.alloc(tier, nst.spec.block_bytes)
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
            return self._match(nst, tokens, rec.extra, False).num_tokens

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
            m = self._match(nst, arr, extra, True)
            nst.tree.lock(m.node)
            blocks, fetch = m.blocks, []
            for i, meta in enumerate(blocks):
                st = meta.handle
                if st.tier is not None and st.tier is not cpu:  # GPU: move down now
                    if not tiers.to_cpu(nst, meta.key, st, st.tier.read(st.slot)):
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
            self._count_read(nst, blocks[:n], len(arr) // nst.spec.block_tokens)
            fetched = {i for i, *_ in fetch}  # tier hits: memory-resident vs read from SSD
            cpu.stats.hits += sum(1 for i in range(n) if i not in fetched)
            self._ssd_hits += sum(1 for i, _, staged, _ in fetch if i < n and not staged)
            for meta in blocks[:n]:
                cpu.policy.on_access(policy_key(nst.fp, meta.key))
            rec = self._leases.open(nst, m.node, cpu, n * nst.spec.block_tokens,
                                    [meta.handle.slot for meta in blocks[:n]])
            if lost is not None:  # pinned by this lease: marked lost, removed on release
                tiers.lose(nst, lost)
            return rec.lease

    # -- copies out -------------------------------------------------------------
    def _read_prefix(self, ns: bytes, tokens, extra: bytes, open_sink) -> int:
        """Copy the cached prefix out through ``open_sink(nblocks)(i, data)``; returns tokens.

        ``open_sink`` is called once, outside the lock, when at least one block is cached.
        """
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            nst = self._namespaces.get(ns)
            m = self._match(nst, arr, extra, True)
            blocks = m.blocks
            nst.tree.lock(m.node)
            plan = []
            for meta in blocks:
                st = meta.handle
                if st.slot is not None:
                    st.tier.policy.on_access(policy_key(nst.fp, meta.key))
                    st.tier.stats.hits += 1
                    st.tier.stats.bytes_out += meta.size
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
                self._count_read(nst, blocks[:n], len(arr) // nst.spec.block_tokens)
                self._ssd_hits += len(promote)
                if self.config.promote_on_get:
                    for meta, data in promote:
                        self._promoter.submit(Promotion(nst.fp, meta.key, meta.handle, data))
        return n * nst.spec.block_tokens

    @staticmethod
    def _count_read(nst: NamespaceState, served, requested: int) -> None:
        nst.hits += len(served)
        nst.misses += max(0, requested - len(served))

    def _promote(self, item: Promotion) -> None:
        with self._lock:
            nst = self._ns.get(item.fp)
            st = item.state
            if self._closed or nst is None or nst.state(item.key) is not st:
                return
            if st.slot is not None or st.lost:
                return
            self._tiers.to_cpu(nst, item.key, st, item.data)

    # -- operator controls (ManagedStore) ----------------------------------------
    @property
    def read_only(self) -> bool:
        return self._controls.read_only

    def set_read_only(self, read_only: bool = True) -> None:
        """Refuse (``True``) or accept again (``False``) new writes; reads keep working."""
        self._controls.read_only = bool(read_only)

    @property
    def may_block(self) -> bool:
        """True with an SSD tier: a read may wait for the disk."""
        return self._writeback is not None

    @property
    def ssd(self) -> WriteBack | None:
        """Transitional: ``transport/ops.py`` still probes ``store.ssd``; ``may_block`` replaces
        it (remove at merge, with ``zero_copy``)."""
        return self._writeback

    @property
    def pin_budget_bytes(self) -> int:
        return self._controls.pins.budget

    @pin_budget_bytes.setter
    def pin_budget_bytes(self, budget: int) -> None:
        with self._lock:
            self._controls.pins.budget = int(budget)

    @property
    def pinned_bytes(self) -> int:
        """Bytes of the distinct pinned blocks."""
        with self._lock:
            return self._controls.pins.pinned_bytes

    def settings(self) -> dict:
        """The store's settings as plain values (run-time changes included)."""
        with self._lock:
            return {**self.config.to_dict(), "pin_budget_bytes": self._controls.pins.budget}

    def pin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo:
        """Keep the cached part of this prefix resident (idempotent per prefix)."""
        return self._controls.pin(ns, tokens, extra)

    def unpin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo:
        """Release the pin made with the same prefix; ``NotFound`` when there is none."""
        return self._controls.unpin(ns, tokens, extra)

    def pins(self) -> list[PinInfo]:
        with self._lock:
            return self._controls.pins.infos()

    def pinned_bytes_of(self, ns: bytes) -> int:
        return self._controls.pinned_bytes_of(ns)

    def evict(self, ns: bytes, tokens=None, extra: bytes = b"") -> EvictResult:
        """Drop every block of ``ns`` (no tokens) or every sequence starting with the prefix."""
        with self._lock:
            self._check_open()
            return self._controls.evict(ns, tokens, extra)

    def policy_names(self) -> dict[str, str]:
        """Tier name -> the name of its eviction policy (memory tiers)."""
        with self._lock:
            return self._tiers.policy_names()

    def set_policy(self, tier_name: str, policy_name: str) -> str:
        """Give tier ``tier_name`` a fresh ``policy_name`` policy; returns the previous name.

        The resident blocks move to the new policy, oldest access first.
        Offline-only policies (``opt``: it needs the future) are refused.
        """
        with self._lock:
            self._check_open()
            return self._controls.set_policy(tier_name, policy_name)

    def check(self) -> None:
        """Assert that the store's bookkeeping is consistent (tests, debugging)."""
        with self._lock:
            self._tiers.check()
