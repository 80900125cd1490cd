"""Tier movement of the TieredStore: allocation under pressure, demotion, promotion.

All of it runs under the store lock (``self._lock``, an RLock, with
``self._cond`` on it); none of it does SSD I/O (that is ``SSDLink``'s workers).

Eviction from a memory tier, by the tier's policy, among blocks that pass
``_may_evict``::

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
"""

from __future__ import annotations

from kvstore.errors import InvalidArgument
from kvstore.prefix_index import Tier
from kvstore.store.block_state import BlockState, NamespaceState, block_tokens_of, split_policy_key
from kvstore.store.memory_tier import MemoryTier
from kvstore.store_api import ArenaSlot


class TierMovement:
    # -- helpers ----------------------------------------------------------------
    def _below(self, tier: MemoryTier) -> MemoryTier | None:
        i = self._tiers.index(tier)
        return self._tiers[i + 1] if i + 1 < len(self._tiers) else None

    def _lookup_pk(self, pk: bytes):
        fp, key = split_policy_key(pk)
        nst = self._ns.get(fp)
        meta = nst.tree.get(key) if nst is not None else None
        return nst, key, meta

    def _header(self, nst: NamespaceState, key: bytes, st: BlockState):
        spec = nst.spec
        tokens = block_tokens_of(nst.tree, key)
        return self.ssd.header(nst.fp, key, st.parent, tokens, st.extra, spec.codec, spec.block_bytes)

    def _install(self, tier: MemoryTier, nst: NamespaceState, key: bytes, st, slot) -> None:
        pk = nst.fp + key
        st.tier, st.slot = tier, slot
        tier.set_owner(slot, pk)
        tier.policy.on_insert(pk)
        nst.tree.get(key).tier = tier.tier
        if st.ssd is None and st.staged is None and not st.writing:
            self._dirty[pk] = None

    def _uninstall(self, st: BlockState, pk: bytes) -> None:
        st.tier.policy.on_remove(pk)
        st.tier.free(st.slot)
        st.tier = st.slot = None

    # -- allocation -------------------------------------------------------------
    def _alloc(self, tier: MemoryTier, nbytes: int) -> ArenaSlot | None:
        """A free slot in ``tier``, evicting by its policy; None when nothing can go."""
        skip: set[bytes] = set()
        while True:
            slot = tier.alloc(nbytes)
            if slot is not None:
                return slot
            self._budget_veto = False
            found = tier.policy.victims(1, lambda pk: self._may_evict(tier, pk, skip))
            if not found:
                if self._budget_veto and self.ssd is not None and self.ssd.staged_bytes:
                    self._cond.wait(0.05)  # the SSD writer frees staging room
                    continue
                return None
            pk = found[0]
            victim = self._lookup_pk(pk)[2].handle.slot
            if not self._evict(tier, pk):
                skip.add(pk)
                continue
            if victim.length != nbytes and not tier.allocator.can_alloc(nbytes):
                self._reclaim_slab(tier, victim, skip)

    def _reclaim_slab(self, tier: MemoryTier, victim: ArenaSlot, skip: set) -> None:
        try:
            owners = tier.slab_owners(victim)
        except InvalidArgument:  # the slab emptied and went back to the free pages
            return
        for pk in owners:
            if pk is not None and self._may_evict(tier, pk, skip):
                self._evict(tier, pk)

    def _may_evict(self, tier: MemoryTier, pk: bytes, skip=()) -> bool:
        if pk in skip:
            return False
        nst, key, meta = self._lookup_pk(pk)
        if meta is None or meta.handle.tier is not tier or nst.tree.is_locked(key):
            return False
        st = meta.handle
        if self._below(tier) is not None:
            return True
        if self.ssd is not None and self.ssd.usable:
            if st.ssd is not None or st.staged is not None:
                return True
            if self.ssd.can_stage(meta.size):
                return True
            self._budget_veto = True
        return nst.tree.is_evictable(key)

    def _evict(self, tier: MemoryTier, pk: bytes) -> bool:
        """Demote or drop block ``pk`` out of ``tier``; False when it cannot go."""
        nst, key, meta = self._lookup_pk(pk)
        st = meta.handle
        below = self._below(tier)
        if below is not None:
            slot = self._alloc(below, meta.size)
            if slot is not None:
                below.write(slot, tier.read(st.slot))
                self._uninstall(st, pk)
                self._install(below, nst, key, st, slot)
                tier.stats.evictions += 1
                tier.stats.demotions += 1
                below.stats.bytes_in += meta.size
                return True
        ssd = self.ssd
        if ssd is not None and ssd.usable and (
            st.ssd is not None or st.staged is not None or ssd.can_stage(meta.size)
        ):
            if st.ssd is None and st.staged is None:
                st.staged = tier.read(st.slot)
                st.writing = True
                ssd.enqueue(
                    "write", nst.fp, key, state=st, header=self._header(nst, key, st),
                    staged=st.staged,
                )
            self._dirty.pop(pk, None)
            self._uninstall(st, pk)
            meta.tier = Tier.SSD
            tier.stats.evictions += 1
            tier.stats.demotions += 1
            return True
        if nst.tree.is_evictable(key):
            self._drop(nst, key)
            tier.stats.evictions += 1
            return True
        return False

    # -- removal ----------------------------------------------------------------
    def _drop(self, nst: NamespaceState, key: bytes) -> None:
        """Take an unlocked leaf tail off the tree and out of every tier."""
        pk = nst.fp + key
        st = nst.tree.remove(key).handle
        if st.slot is not None:
            self._uninstall(st, pk)
        self._dirty.pop(pk, None)
        self._lost.discard(pk)
        if self.ssd is not None and (st.ssd is not None or st.writing):
            self.ssd.enqueue("remove", nst.fp, key)
        st.ssd = None

    def _remove_subtree(self, nst: NamespaceState, key: bytes) -> int:
        """Drop ``key`` and its extensions, skipping locked ones; returns blocks dropped."""
        from kvstore.store.block_state import subtree_keys

        dropped = 0
        for k in reversed(subtree_keys(nst.tree, key)):
            if nst.tree.is_evictable(k):
                self._drop(nst, k)
                dropped += 1
        return dropped

    def _lose(self, nst: NamespaceState, key: bytes) -> None:
        """Block ``key``'s bytes are gone: drop it and what follows, or mark it if pinned."""
        st = nst.state(key)
        if st is None:
            return
        self._remove_subtree(nst, key)
        if key in nst.tree:
            st.lost = True
            self._lost.add(nst.fp + key)

    def _retry_lost(self) -> None:
        for pk in list(self._lost):
            nst, key, meta = self._lookup_pk(pk)
            if meta is None:
                self._lost.discard(pk)
            else:
                self._lose(nst, key)

    def _apply_ssd_evictions(self, pairs) -> None:
        """The SSD tier freed these records (whole segments): forget those copies."""
        for fp, key in pairs:
            nst = self._ns.get(fp)
            st = nst.state(key) if nst is not None else None
            if st is None or st.ssd is None:
                continue
            st.ssd = None
            if st.slot is not None:
                self._dirty[fp + key] = None
            elif st.staged is None:
                self._lose(nst, key)
