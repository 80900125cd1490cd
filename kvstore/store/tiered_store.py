"""TieredStore: the ``ManagedStore`` over GPU (optional), CPU and SSD (optional) tiers.

One ``RadixTree`` per namespace indexes every cached block, whichever tier
holds it. One store lock (``StoreLock``) guards all metadata, taken once per
call on the hot path; payload copies run outside it, on blocks whose path is
locked in the tree (never evicted, demoted or overwritten while locked)::

    put ──> [lock] lock path, allocate slots (evicting)
            copy payloads into the slots                      (no lock)
            commit: deferred to the lock's next holder
    get ──> [lock] match + lock path
            copy out: memory slot / staged bytes / SSD read   (no lock; SSD-only
            blocks straight into the caller's buffer, one batch)
            unlock: deferred; SSD hits promoted in the background

The parts, each owning its state: ``TierSet`` (memory tiers, policies,
demotion), ``DataPath`` (writes, leases) and ``ReadPath`` (reads, promotion),
``SSDSide`` (the SSD tier, ``WriteBack``'s writer threads, their reports, the
manifest), ``Promoter``, ``LeaseTable``, ``OperatorControls`` (``PinTable``).

Hints (``hint``): an engine's word about a cached prefix goes to the policy of
every memory tier that holds some of its blocks; it reorders later evictions
only. Operator controls (``ManagedStore``): ``set_read_only`` refuses writes
(``Draining``); ``pin``/``unpin`` keep a prefix resident within
``pin_budget_bytes``; ``evict`` drops a namespace or a prefix (pinned and
in-use blocks are skipped); ``set_policy`` replaces a tier's policy at run time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from kvstore.errors import InvalidArgument, StorageError
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store.block_state import policy_key, private_tail
from kvstore.store.config import StoreConfig
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.data_path import DataPath
from kvstore.store.gpu_tier import GPUTier, cuda_available
from kvstore.store.lease_table import LeaseTable
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.namespace_table import NamespaceTable
from kvstore.store.operator_controls import OperatorControls
from kvstore.store.promotion import Promoter
from kvstore.store.quotas import Quotas, tenant_usage
from kvstore.store.read_path import ReadPath, cached_tokens, cached_tokens_many, match_prefix
from kvstore.store.ssd_side import SSDSide
from kvstore.store.store_lock import StoreLock
from kvstore.store.tenant_arenas import TenantArena
from kvstore.store.tier_set import TierSet
from kvstore.store.write_back import WriteBack
from kvstore.store.write_behind import WriteBehind
from kvstore.store_api import (
    Alloc,
    ArenaInfo,
    Capabilities,
    EvictResult,
    Lease,
    PinInfo,
    PrefixHint,
    StoreStats,
    TierStats,
)
from kvstore.tokens import as_tokens

log = logging.getLogger("kvstore.store")


class TieredStore:
    """The in-process store. ``TieredStore(StoreConfig(cpu_bytes="4GiB", ...))``."""

    capabilities = Capabilities(leases=True)

    def __init__(self, config: StoreConfig | None = None, **settings):
        self.config = config = config if config is not None else StoreConfig(**settings)
        self._lock = StoreLock()  # one acquisition per hot call (``store_lock``)
        self._cond = threading.Condition(self._lock)
        self._namespaces = NamespaceTable()
        self._ns = self._namespaces.by_fp  # what the tier set and the policies' views read
        self._leases = LeaseTable(config.write_lease_seconds)
        self.quotas = Quotas(config.cpu_bytes, config.ssd_bytes if config.ssd_enabled else 0,
                             config.tenant_cpu_bytes, config.tenant_ssd_bytes,
                             config.tenant_quotas)
        self._closed = False
        self._ssd: SSDSide | None = None  # the SSD tier's parts, with ``ssd_bytes``
        self._writeback: WriteBack | None = None
        self._behind: WriteBehind | None = None
        self._promoter: Promoter | None = None
        memory: list[MemoryTier] = []
        if config.gpu_bytes and cuda_available():
            memory.append(GPUTier(config.gpu_bytes, 0, config.gpu_device))
        elif config.gpu_bytes:
            log.warning("gpu_bytes set but CUDA is not available: no GPU tier")
        self._cpu = CPUTier(config.cpu_bytes, config.cpu_page_bytes, config.arena_dir,
                            self.quotas.cpu)
        memory.append(self._cpu)
        self._tiers = TierSet(memory, self._ns, self._cond, config.ssd_enabled)
        self._controls = OperatorControls(self, self._lock, self._namespaces, self._tiers, config)
        self._path = DataPath(self._lock, self._namespaces, self._tiers, self._leases, self._cpu,
                              config, lambda: self._closed, lambda: self._controls.read_only)
        self._reads = ReadPath(self._lock, self._namespaces, self._tiers, self._leases, self._cpu,
                               config, lambda: self._closed)
        try:
            for tier in memory:
                self._tiers.set_policy(tier, config.make_policy(getattr(config, f"{tier.name}_policy")))
            if config.ssd_enabled:
                self._ssd = SSDSide(config, self._lock, self._cond, self._tiers,
                                    self._manifest_snapshot, self.quotas, self._namespaces.tenant_of)
                self._writeback = self._ssd.writeback
            self._promoter = Promoter(self._reads.promote_many)
            self._reads.attach(self._writeback, self._promoter)
            seconds = config.write_behind_seconds if self._writeback is not None else 0
            self._behind = WriteBehind(seconds or min(5.0, config.write_lease_seconds),
                                       self._write_behind_tick)
        except BaseException:
            self.close()
            raise

    def _write_behind_tick(self) -> None:
        """Queue SSD writes of the dirty blocks (write-behind) and expire stalled write leases."""
        with self._lock:
            if self._closed:
                return
            self._path.expire_write_leases()
            wb = self._writeback
            if wb is not None and wb.usable and self.config.write_behind_seconds:
                self._ssd.reports.write_dirty()

    # -- namespaces -------------------------------------------------------------
    def register(self, spec: NamespaceSpec) -> bytes:
        """Add a namespace; with an SSD tier, returns once the manifest names it
        (written by ``ManifestWriter``, many registrations per write)."""
        with self._lock:
            self._check_open()
            if not self._namespaces.register(spec, self._tiers.tiers):
                return spec.fingerprint
        if self._ssd is not None:
            self._ssd.manifest.save_now()
        return spec.fingerprint

    def _manifest_snapshot(self) -> dict:
        with self._lock:
            return self._namespaces.manifest()

    def namespaces(self) -> list[NamespaceSpec]:
        with self._lock:
            return self._namespaces.specs()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("store is closed")

    # -- the BlockStore API: one lock acquisition a call on the hot path ----------------
    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            nst = self._namespaces.get(ns)
            found = cached_tokens(self._tiers, nst, arr, extra)
            bt = nst.spec.block_tokens
            self._reads.counts.lookup(nst, found // bt, len(arr) // bt)
            return found

    def lookup_many(self, ns: bytes, tokens_list: Sequence, extras: Sequence[bytes] | None = None,
                    ) -> list[int]:
        """``lookup`` of each token array, under one acquisition of the lock (the lookup
        counters move once for the whole batch; ``read_path.cached_tokens_many``)."""
        if extras is not None and len(extras) != len(tokens_list):
            raise InvalidArgument("lookup_many: one extra per token array")
        if not isinstance(tokens_list, (list, tuple)):  # walked twice
            tokens_list = list(tokens_list)
        with self._lock:
            nst = self._namespaces.get(ns)
            found, asked = cached_tokens_many(self._tiers, nst, tokens_list, extras)
            self._reads.counts.lookup(nst, sum(found) // nst.spec.block_tokens, asked)
            return found

    def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        """Lease (one lock acquisition), copy without the lock, commit at the lock's next holder."""
        arr = as_tokens(tokens)
        self._check_open()
        bt = self._namespaces.get(ns).spec.block_tokens  # a spec never changes: no lock
        nblocks = min(len(arr) // bt, len(payloads))
        rec = self._path.write_lease(ns, arr[: nblocks * bt], extra, self._tiers.tiers[0],
                                     expires=False)
        try:
            for j, slot in enumerate(rec.lease.slots):
                rec.tier.write(slot, payloads[rec.lease.first_block + j])
        except BaseException:
            self._path.release(rec.lease.lease_id)
            raise
        committed = self._path.commit_later(rec)
        if nblocks == len(arr) // bt:
            return committed
        return self.lookup(ns, arr, extra)  # payloads for fewer blocks than tokens

    def get(self, ns: bytes, tokens, extra: bytes = b"") -> tuple[int, list[bytes]]:
        self._check_open()
        return self._reads.get(ns, tokens, extra)

    def get_into(self, ns: bytes, tokens, alloc: Alloc, extra: bytes = b""):
        """``(tokens, buffer)``: the cached prefix's blocks back to back in ``alloc(nbytes)``
        (called once, with the whole prefix's bytes); ``(0, None)`` on a miss
        (``ReadPath.get_into``)."""
        self._check_open()
        return self._reads.get_into(ns, tokens, alloc, extra)

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            nst = self._namespaces.get(ns)
            m = nst.tree.match(arr, extra)
            return self._tiers.remove_subtree(nst, m.blocks[0].key) if m.blocks else 0

    def hint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int:
        """Apply ``hint`` to the cached prefix's blocks in every memory tier's policy.

        Returns the leading tokens cached (what it applied to); a prefix that is
        not cached is a no-op. Nothing is moved or dropped here: the hint only
        reorders the next evictions. A ``session_end`` hint goes to the prefix's
        private tail only (blocks no other cached sequence goes through, found in
        the tree: a demoting tier's policy cannot tell), so a shared system
        prompt keeps its place, and any protection another hint gave it.
        """
        arr = as_tokens(tokens)
        with self._lock:
            nst = self._namespaces.get(ns)
            m = match_prefix(self._tiers, nst, arr, extra, False)
            keys = [b.key for b in m.blocks]
            if hint.session_end:  # only the blocks no other cached sequence goes through
                keys = private_tail(nst.tree, keys)
            if keys:
                self._tiers.apply_hint([policy_key(nst.fp, k) for k in keys], hint)
            return m.num_tokens

    def flush(self) -> None:
        """Make every block acknowledged before the call durable on SSD (no-op without SSD)."""
        if self._ssd is not None:
            self._ssd.flush(self._check_open)

    def wait_writes(self) -> None:
        """Return once every SSD write and removal queued before the call has finished."""
        if self._ssd is not None:
            self._ssd.wait_writes()

    def stats(self) -> StoreStats:
        with self._lock:
            tiers = self._tiers.stats()
            if self._writeback is not None:
                s = self._writeback.stats()
                s.hits, s.misses = self._reads.counts.ssd_hits, self._reads.counts.ssd_misses
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
        if self._behind is not None:
            self._behind.close()
        if self._promoter is not None:
            self._promoter.close()
        if self._ssd is not None:
            self._ssd.close()
        for tier in self._tiers.tiers:
            tier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- leases (LeasingStore) --------------------------------------------------
    def arena(self) -> ArenaInfo:
        """The default tenant's arena (``/proc/<pid>/fd/<n>``: a memory file of this process)."""
        with self._lock:
            return self._cpu.info()

    def tenant_arena(self, tenant: str) -> TenantArena:
        """Tenant ``tenant``'s own arena (its ``fd``, ``size`` and ``base``): what shm hands over."""
        with self._lock:
            self._check_open()
            return self._cpu.arena_of(tenant)

    # -- tenants --------------------------------------------------------------------
    def set_quota(self, tenant: str, cpu_bytes=None, ssd_bytes=None) -> dict:
        """Change a tenant's quota at run time (the admin API); returns its quotas now."""
        self.quotas.set(tenant, cpu_bytes, ssd_bytes)
        if self._writeback is not None:  # over its new SSD quota: its own oldest segments go
            self._writeback.tier.apply_quota(tenant)
        return self.tenant_usage()[tenant] if tenant in self.tenant_usage() else {
            "cpu_quota": self.quotas.cpu(tenant), "cpu_used": 0,
            "ssd_quota": self.quotas.ssd(tenant), "ssd_used": 0}

    def tenant_usage(self) -> dict[str, dict[str, int]]:
        """Per tenant: CPU bytes used (blocks and write leases), SSD bytes used, and quotas."""
        with self._lock:
            ssd = self._writeback.tier if self._writeback is not None else None
            return tenant_usage(self.quotas, self._cpu.allocator, self._namespaces.by_fp.values(), ssd)

    @property
    def expired_write_leases(self) -> int:
        return self._leases.expired

    def read_slot(self, slot) -> memoryview:
        return self._cpu.view(slot)

    @property
    def lease_count(self) -> int:
        """Leases open now (pins hold one each)."""
        with self._lock:
            return len(self._leases)

    def lease_write(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        arr = as_tokens(tokens)
        self._check_open()
        bt = self._namespaces.get(ns).spec.block_tokens  # a spec never changes: no lock
        return self._path.write_lease(ns, arr[: len(arr) // bt * bt], extra, self._cpu).lease

    @property
    def evicts_ahead(self) -> bool:
        """Whether ``make_room`` frees anything (``StoreConfig.evict_ahead_share`` > 0)."""
        return self._path.config.evict_ahead_share > 0

    def make_room(self, ns: bytes, nblocks: int) -> int:
        """Free room for ``nblocks`` blocks of ``ns`` in the CPU arena ahead of the next
        write (``DataPath.make_room``: the daemon calls it off the event loop while a
        client copies into the slots it was just leased)."""
        return self._path.make_room(ns, nblocks, self._cpu)

    def commit_lease(self, lease_id: int) -> int:
        return self._path.commit_lease(lease_id)

    def release(self, lease_id: int) -> None:
        self._path.release(lease_id)

    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        return self._reads.lease_read(ns, tokens, extra)

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
