"""Statistics and self-checks of the TieredStore (mixin)."""

from __future__ import annotations

from dataclasses import replace

from kvstore.store_api import NamespaceStats, StoreStats, TierStats


class StatsOps:
    _ssd_hits = 0

    def stats(self) -> StoreStats:
        with self._lock:
            tiers = [t.tier_stats() for t in self._tiers]
            if self.ssd is not None:
                s = self.ssd.ssd.stats()
                s = replace(s) if isinstance(s, TierStats) else TierStats("ssd", 0, 0, 0)
                s.hits = max(s.hits, self._ssd_hits)
                s.degraded = self.ssd.degraded
                s.errors = max(s.errors, self.ssd.write_errors)
                tiers.append(s)
            namespaces = [
                NamespaceStats(
                    fingerprint=fp.hex(), spec=n.spec, blocks=len(n.tree),
                    bytes=len(n.tree) * n.spec.block_bytes, hits=n.hits, misses=n.misses,
                )
                for fp, n in self._ns.items()
            ]
            return StoreStats(tiers, namespaces)

    def tier_stats(self, name: str) -> TierStats:
        return next(t for t in self.stats().tiers if t.name == name)

    def check(self) -> None:
        """Assert that the store's bookkeeping is consistent (tests, debugging)."""
        with self._lock:
            resident = {t: 0 for t in self._tiers}
            for fp, nst in self._ns.items():
                for meta in nst.tree.blocks():
                    st, pk = meta.handle, fp + meta.key
                    assert meta.tier == st.tier_enum(), "meta tier out of sync"
                    if st.slot is not None:
                        assert st.tier.owner(st.slot.offset) == pk, "slot owner mismatch"
                        assert pk in st.tier.policy, "resident block unknown to its policy"
                        resident[st.tier] += 1
                    else:
                        assert st.ssd is not None or st.staged is not None or st.lost, (
                            "block with no bytes anywhere"
                        )
                    if pk in self._dirty:
                        assert st.slot is not None and st.ssd is None
            reserved = sum(len(r.lease.slots) for r in self._leases.values() if r.lease.writable)
            for tier, count in resident.items():
                tier.allocator.check()
                assert len(tier.policy) == count, "policy tracks non-resident blocks"
                assert tier.blocks >= count and tier.used_bytes <= tier.capacity_bytes
            assert reserved >= 0
