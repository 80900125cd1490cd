"""ClusterStats: the ``StoreStats`` of a cluster, the sum of the nodes that answered."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kvstore.store_api import NamespaceStats, StoreStats, TierStats


@dataclass
class ClusterStats(StoreStats):
    """The cluster's ``StoreStats``: tiers summed by name and namespaces by fingerprint
    over the nodes that answered; ``nodes`` holds each one's own."""

    cluster: str = ""
    nodes: dict[str, StoreStats] = field(default_factory=dict)

    @classmethod
    def combine(cls, cluster: str, nodes: dict[str, StoreStats]) -> ClusterStats:
        tiers: dict[str, TierStats] = {}
        namespaces: dict[str, NamespaceStats] = {}
        for stats in nodes.values():
            for tier in stats.tiers:
                tiers[tier.name] = _summed(tiers.get(tier.name), tier)
            for ns in stats.namespaces:
                namespaces[ns.fingerprint] = _summed(namespaces.get(ns.fingerprint), ns)
        return cls(list(tiers.values()), list(namespaces.values()), cluster, dict(nodes))


def _summed(total, part):
    """``total`` (None: a copy of ``part``) plus ``part``: numbers add, flags or, the rest is kept."""
    if total is None:
        return dataclasses.replace(part)
    for f in dataclasses.fields(part):
        mine, theirs = getattr(total, f.name), getattr(part, f.name)
        if isinstance(mine, bool):
            setattr(total, f.name, mine or theirs)
        elif isinstance(mine, int):
            setattr(total, f.name, mine + theirs)
    return total
