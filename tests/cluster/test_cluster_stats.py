"""ClusterBackend.stats: the nodes' StoreStats summed into one (and kept per node)."""

from __future__ import annotations

from kvstore.client.cluster_backend import ClusterStats
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import NamespaceStats, StoreStats, TierStats


def test_tiers_and_namespaces_add_up_over_the_nodes():
    spec = NamespaceSpec(KVLayout("m", 1, 1, 8, "float16", 4), "none", "", 64)
    a = StoreStats([TierStats("cpu", 100, 10, 1, hits=2)],
                   [NamespaceStats("ab", spec, 1, 64, hits=2)])
    b = StoreStats([TierStats("cpu", 100, 30, 3, hits=1, degraded=True),
                    TierStats("ssd", 1000, 5, 1)],
                   [NamespaceStats("ab", spec, 3, 192, misses=4)])
    total = ClusterStats.combine("c1", {"n1": a, "n2": b})
    assert isinstance(total, StoreStats) and total.cluster == "c1"
    cpu, ssd = total.tiers
    assert (cpu.name, cpu.capacity_bytes, cpu.used_bytes, cpu.blocks, cpu.hits) == ("cpu", 200, 40, 4, 3)
    assert cpu.degraded and ssd.blocks == 1
    (ns,) = total.namespaces
    assert (ns.fingerprint, ns.spec, ns.blocks, ns.bytes, ns.hits, ns.misses) == ("ab", spec, 4, 256, 2, 4)
    assert total.nodes == {"n1": a, "n2": b}
    assert a.tiers[0].used_bytes == 10  # the nodes' own stats are left as they were
