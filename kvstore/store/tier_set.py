"""TierSet: the memory tiers, their policies, and the rules that move blocks between tiers.

All of it runs under the store lock (the ``cond`` given to it is on that
lock); none of it does SSD I/O (that is ``WriteBack``'s workers, which this
part feeds with jobs and whose reports it applies).

Eviction from a memory tier, by the tier's policy, among blocks that pass
``may_evict``::

    GPU victim:  moved to the CPU tier (any unlocked block; a prefix may span tiers)
    CPU victim:  with a usable SSD tier, demoted: any unlocked block may go
                   clean (already on SSD)  -> its slot is freed at once
                   dirty                   -> bytes staged for the SSD writer, slot freed
                                              (only while the staging buffer has room)
                 otherwise dropped: only the last block of an unlocked leaf, so a
                 cached prefix never loses its middle
    locked blocks (leases, in-flight puts, gets and flush writes lock their path)
    are never victims.

When the victim belongs to another slot class and the tier still cannot
allocate, the rest of the victim's slab is evicted too: pages move between
classes a whole slab at a time, at the cost of one policy decision.

Bookkeeping owned here: ``dirty`` (resident blocks with no SSD copy, in put
order: what a flush writes) and ``lost`` (blocks whose bytes are gone but
that a lease still pins: removed when it lets go). The write-back worker's
reports are applied by ``WriteBackReports`` (``write_back_reports``).
"""

from __future__ import annotations

import threading

from kvstore.errors import InvalidArgument
from kvstore.eviction import EvictionPolicy, Hint
from kvstore.prefix_index import Tier
from kvstore.ssd.record import SSDRecordHeader
from kvstore.store.block_state import (
    BlockState,
    NamespaceState,
    block_tokens_of,
    policy_key,
    split_policy_key,
    subtree_keys,
    tree_view,
)
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.memory_tier import MemoryTier
from kvstore.store.write_back import Key, WriteBack
from kvstore.store_api import ArenaSlot, PrefixHint, TierStats


class TierSet:
    def __init__(self, tiers: list[MemoryTier], namespaces: dict[bytes, NamespaceState],
                 cond: threading.Condition, ssd_enabled: bool):
        self.tiers = tiers  # top first; the CPU tier is the last
        self.cpu: CPUTier = tiers[-1]
        self.writeback: WriteBack | None = None  # attached once the SSD tier is open
        self._ns = self.namespaces = namespaces
        self._cond = self.cond = cond
        self._ssd_enabled = ssd_enabled
        self.dirty: dict[bytes, None] = {}  # policy keys, put order
        self.lost: set[bytes] = set()  # policy keys
        self._budget_veto = False

    # -- tiers and policies ------------------------------------------------------
    def below(self, tier: MemoryTier) -> MemoryTier | None:
        i = self.tiers.index(tier)
        return self.tiers[i + 1] if i + 1 < len(self.tiers) else None

    def named(self, name: str) -> MemoryTier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        names = [t.name for t in self.tiers]
        raise InvalidArgument(f"no {name!r} tier with a policy (tiers: {names})")

    def set_policy(self, tier: MemoryTier, policy: EvictionPolicy) -> None:
        """Give ``tier`` ``policy``; its resident blocks enter it oldest access first."""
        policy.bind(tree_view(self._ns, self.below(tier) is None and not self._ssd_enabled))
        resident = []
        for fp, nst in self._ns.items():
            for meta in nst.tree.blocks():
                if meta.handle.tier is tier:
                    resident.append((max(meta.last_access, meta.inserted_at),
                                     policy_key(fp, meta.key)))
        for _, pk in sorted(resident, key=lambda r: r[0]):
            policy.on_insert(pk)
        tier.policy = policy

    def apply_hint(self, keys: list[bytes], hint: PrefixHint) -> None:
        """Tell every memory tier's policy ``hint`` about its resident blocks among ``keys``.

        ``keys`` are policy keys, a prefix's blocks in order. ``keep_until``
        (seconds from now) becomes a deadline on each policy's own ``clock``.
        Blocks on no memory tier (on SSD only, or gone) are left out: the SSD
        tier frees whole segments in log order and takes no hints.
        """
        by_tier: dict[MemoryTier, list[bytes]] = {}
        for pk in keys:
            meta = self.lookup(pk)[2]
            tier = meta.handle.tier if meta is not None else None
            if tier is not None:
                by_tier.setdefault(tier, []).append(pk)
        for tier, resident in by_tier.items():
            policy = tier.policy
            until = None if hint.keep_until is None else policy.clock() + hint.keep_until
            policy.on_hint(resident, Hint(hint.session_end, until, hint.priority))

    def policy_names(self) -> dict[str, str]:
        return {t.name: t.policy.name for t in self.tiers}

    def stats(self) -> list[TierStats]:
        return [t.tier_stats() for t in self.tiers]

    # -- blocks ------------------------------------------------------------------------
    def lookup(self, pk: bytes):
        """``(namespace state, block key, BlockMeta or None)`` of policy key ``pk``."""
        fp, key = split_policy_key(pk)
        nst = self._ns.get(fp)
        meta = nst.tree.get(key) if nst is not None else None
        return nst, key, meta

    def header(self, nst: NamespaceState, key: bytes, st: BlockState) -> SSDRecordHeader:
        spec = nst.spec
        return SSDRecordHeader(nst.fp, key, st.parent, block_tokens_of(nst.tree, key), st.extra,
                               spec.codec, spec.block_bytes)

    def install(self, tier: MemoryTier, nst: NamespaceState, key: bytes, st: BlockState,
                slot: ArenaSlot) -> None:
        pk = policy_key(nst.fp, key)
        st.tier, st.slot = tier, slot
        tier.set_owner(slot, pk)
        tier.policy.on_insert(pk)
        nst.tree.get(key).tier = tier.tier
        if st.ssd is None and st.staged is None and not st.writing:
            self.dirty[pk] = None

    def uninstall(self, st: BlockState, pk: bytes) -> None:
        st.tier.policy.on_remove(pk)
        st.tier.free(st.slot)
        st.tier = st.slot = None

    def to_cpu(self, nst: NamespaceState, key: bytes, st: BlockState, data) -> bool:
        """Make block ``key`` CPU-resident from ``data``; False when no slot could be freed."""
        slot = self.alloc(self.cpu, nst.spec.block_bytes, nst.spec.tenant)
        if slot is None:
            return False
        if not (st.slot is not None and st.tier is self.cpu):  # else: promoted meanwhile
            self.cpu.write(slot, data)
        self.place(nst, key, st, slot)
        return True

    def place(self, nst: NamespaceState, key: bytes, st: BlockState, slot: ArenaSlot) -> None:
        """Make block ``key`` CPU-resident in ``slot``, which already holds its bytes (a
        promotion). A block already in the CPU tier keeps its slot: ``slot`` is freed."""
        cpu = self.cpu
        if st.slot is not None and st.tier is cpu:  # promoted meanwhile
            cpu.free(slot)
            return
        if st.slot is not None:
            self.uninstall(st, policy_key(nst.fp, key))
        self.install(cpu, nst, key, st, slot)
        cpu.stats.promotions += 1

    # -- allocation -----------------------------------------------------------------
    def alloc(self, tier: MemoryTier, nbytes: int, tenant: str = "") -> ArenaSlot | None:
        """A free slot in ``tier`` for ``tenant``, evicting by its policy; None when nothing can go.

        On the CPU tier (one arena per tenant) the victims are the tenant's own
        blocks when it is at its quota, else its own or those of tenants above
        their fair share (``kvstore.store.quotas``): never another tenant's within it.
        """
        skip: set[bytes] = set()
        while True:
            slot = tier.alloc(nbytes, tenant)
            if slot is not None:
                return slot
            self._budget_veto = False
            fair = self._fairness(tier, tenant)
            found = tier.policy.victims(
                1, lambda pk, fair=fair: fair(pk) and self._may_evict(tier, pk, skip))
            if not found:
                wb = self.writeback
                if self._budget_veto and wb is not None and wb.staged_bytes:
                    self._cond.wait(0.05)  # the SSD writer frees staging room
                    continue
                return None
            pk = found[0]
            victim = self.lookup(pk)[2].handle.slot
            if not self._evict(tier, pk):
                skip.add(pk)
                continue
            if victim.length != nbytes and not tier.can_alloc(nbytes, tenant) and (
                    tier is not self.cpu or tier.allocator.same_arena(victim.offset, tenant)):
                self._reclaim_slab(tier, victim, skip, fair)

    def _fairness(self, tier: MemoryTier, tenant: str):
        """Which blocks a ``tenant``'s allocation in ``tier`` may evict (policy key -> bool)."""
        if tier is not self.cpu:
            return lambda pk: True
        arenas, own_only = tier.allocator, tier.shortage == "quota"

        def fair(pk: bytes) -> bool:
            nst = self._ns.get(split_policy_key(pk)[0])
            owner = nst.spec.tenant if nst is not None else ""
            if owner == tenant:
                return True
            return not own_only and arenas.used_by(owner) > arenas.fair_share(owner, tenant)

        return fair

    def _reclaim_slab(self, tier: MemoryTier, victim: ArenaSlot, skip: set, fair) -> None:
        try:
            owners = tier.slab_owners(victim)
        except InvalidArgument:  # the slab emptied and went back to the free pages
            return
        for pk in owners:
            if pk is not None and fair(pk) and self._may_evict(tier, pk, skip):
                self._evict(tier, pk)

    def _demotable(self, st: BlockState, nbytes: int, tenant: str) -> bool:
        """Whether the SSD tier can take this CPU victim now (clean, staged, or room to stage
        within its tenant's SSD quota)."""
        wb = self.writeback
        return wb is not None and wb.usable and (
            st.ssd is not None or st.staged is not None or (
                wb.can_stage(nbytes) and wb.tier.accepts(tenant, nbytes)))

    def _may_evict(self, tier: MemoryTier, pk: bytes, skip=()) -> bool:
        if pk in skip:
            return False
        nst, key, meta = self.lookup(pk)
        if meta is None or meta.handle.tier is not tier or nst.tree.is_locked(key):
            return False
        if self.below(tier) is not None or self._demotable(meta.handle, meta.size,
                                                           nst.spec.tenant):
            return True
        if self.writeback is not None and self.writeback.usable:
            self._budget_veto = True  # staging full: wait for the writer, or drop a tail
        return nst.tree.is_evictable(key)

    def _evict(self, tier: MemoryTier, pk: bytes) -> bool:
        """Demote or drop block ``pk`` out of ``tier``; False when it cannot go."""
        nst, key, meta = self.lookup(pk)
        st = meta.handle
        below = self.below(tier)
        if below is not None:
            slot = self.alloc(below, meta.size, nst.spec.tenant)
            if slot is not None:
                # one copy straight into the slot below, asynchronous from a GPU: the
                # CPU tier settles it before the slot is read or reused
                done = tier.copy_out(st.slot, below.view(slot))
                if done is not None:
                    below.expect(slot, done)
                self.uninstall(st, pk)
                self.install(below, nst, key, st, slot)
                tier.stats.evictions += 1
                tier.stats.demotions += 1
                below.stats.bytes_in += meta.size
                return True
        if self._demotable(st, meta.size, nst.spec.tenant):
            if st.ssd is None and st.staged is None:
                st.staged = tier.read(st.slot)
                st.writing = True
                self.writeback.write(nst.fp, key, st, self.header(nst, key, st), staged=st.staged)
            self.dirty.pop(pk, None)
            self.uninstall(st, pk)
            meta.tier = Tier.SSD
            tier.stats.evictions += 1
            tier.stats.demotions += 1
            return True
        if nst.tree.is_evictable(key):
            self.drop(nst, key)
            tier.stats.evictions += 1
            return True
        return False

    # -- removal -----------------------------------------------------------------------
    def drop(self, nst: NamespaceState, key: bytes) -> None:
        """Take an unlocked leaf tail out of every tier and off the tree."""
        if not nst.tree.is_evictable(key):
            raise InvalidArgument("only the last block of an unlocked leaf can be dropped")
        pk = policy_key(nst.fp, key)
        st = nst.state(key)
        if st.slot is not None:  # before the tree forgets it: the policy may ask for its parent
            self.uninstall(st, pk)
        nst.tree.remove(key)
        self.dirty.pop(pk, None)
        self.lost.discard(pk)
        if self.writeback is not None and (st.ssd is not None or st.writing):
            self.writeback.remove(nst.fp, key)
        st.ssd = None

    def remove_subtree(self, nst: NamespaceState, key: bytes) -> int:
        """Drop ``key`` and its extensions, skipping locked ones; returns blocks dropped."""
        dropped = 0
        for k in reversed(subtree_keys(nst.tree, key)):
            if nst.tree.is_evictable(k):
                self.drop(nst, k)
                dropped += 1
        return dropped

    def lose(self, nst: NamespaceState, key: bytes) -> None:
        """Block ``key``'s bytes are gone: drop it and what follows, or mark it if pinned."""
        st = nst.state(key)
        if st is None:
            return
        self.remove_subtree(nst, key)
        if key in nst.tree:
            st.lost = True
            self.lost.add(policy_key(nst.fp, key))

    def retry_lost(self) -> None:
        """Drop the lost blocks that no lease pins any more."""
        for pk in list(self.lost):
            nst, key, meta = self.lookup(pk)
            if meta is None:
                self.lost.discard(pk)
            else:
                self.lose(nst, key)

    def forget_ssd_copies(self, pairs: list[Key]) -> None:
        """The SSD tier freed these records (whole segments): forget those copies.

        A block still in memory is not queued again (its tenant's log is at its
        quota: rewriting it would only push out its newer blocks, every tick);
        it is written again when it is demoted."""
        for fp, key in pairs:
            nst = self._ns.get(fp)
            st = nst.state(key) if nst is not None else None
            if st is None or st.ssd is None:
                continue
            st.ssd = None
            if st.slot is None and st.staged is None:
                self.lose(nst, key)

    # -- self-check --------------------------------------------------------------------
    def check(self) -> None:
        """Assert that the blocks' states, the tiers and the policies agree."""
        resident = {t: 0 for t in self.tiers}
        for fp, nst in self._ns.items():
            for meta in nst.tree.blocks():
                st, pk = meta.handle, policy_key(fp, meta.key)
                assert meta.tier == st.tier_enum(), "meta tier out of sync"
                if st.slot is not None:
                    assert st.tier.owner(st.slot.offset) == pk, "slot owner mismatch"
                    assert pk in st.tier.policy, "resident block unknown to its policy"
                    resident[st.tier] += 1
                else:
                    assert st.ssd is not None or st.staged is not None or st.lost, (
                        "block with no bytes anywhere"
                    )
                if pk in self.dirty:
                    assert st.slot is not None and st.ssd is None
        for tier, count in resident.items():
            tier.allocator.check()
            assert len(tier.policy) == count, "policy tracks non-resident blocks"
            assert tier.blocks >= count and tier.used_bytes <= tier.capacity_bytes
