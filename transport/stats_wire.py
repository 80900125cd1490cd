"""The ``stats`` reply: ``StoreStats`` to the wire map and back (PROTOCOL.md, op ``stats``).

The daemon sends ``{"tiers": [TierStats fields...], "namespaces": [NamespaceStats
fields..., "spec": NamespaceSpec map], "server": {connections, requests,
errors}}``, a tenant's own namespaces only; the client turns it back into the
dataclasses (``RemoteStats``: a ``StoreStats`` plus the server's counters).
Both directions are written here, so the format lives in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvstore.dataclass_dict import known_fields
from kvstore.errors import ProtocolError
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import NamespaceStats, StoreStats, TierStats


@dataclass
class ServerStats:
    """The daemon's connection counters, as of the ``stats`` request."""

    connections: int = 0
    requests: int = 0
    errors: int = 0


@dataclass
class RemoteStats(StoreStats):
    """A daemon's ``StoreStats`` (as seen by this client's tenant) and its server counters."""

    server: ServerStats = dataclasses.field(default_factory=ServerStats)


def stats_to_wire(stats: StoreStats, tenant: str, server: ServerStats) -> dict:
    """The reply map of ``stats`` for a connection of ``tenant``."""
    namespaces = []
    for ns in stats.namespaces:
        if ns.spec.tenant != tenant:
            continue  # a tenant sees its own namespaces only
        row = {f.name: getattr(ns, f.name) for f in dataclasses.fields(ns)}
        row["spec"] = ns.spec.to_dict()
        namespaces.append(row)
    return {
        "tiers": [dataclasses.asdict(t) for t in stats.tiers],
        "namespaces": namespaces,
        "server": dataclasses.asdict(server),
    }


def stats_from_wire(result: dict) -> RemoteStats:
    """``RemoteStats`` from a ``stats`` reply (fields a newer daemon adds are ignored)."""
    try:
        tiers = [TierStats(**known_fields(TierStats, t)) for t in result.get("tiers", [])]
        namespaces = []
        for row in result.get("namespaces", []):
            fields = known_fields(NamespaceStats, row)
            fields["spec"] = NamespaceSpec.from_dict(row["spec"])
            namespaces.append(NamespaceStats(**fields))
        server = ServerStats(**known_fields(ServerStats, result.get("server", {})))
    except (TypeError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"bad stats reply: {exc}") from None
    return RemoteStats(tiers, namespaces, server)
