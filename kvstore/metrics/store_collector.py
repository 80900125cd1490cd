"""Gauges and counters read from the store and the daemon at scrape time (a custom collector).

Nothing here runs on the data path: each scrape takes one ``store.stats()``
(under the store lock, O(tiers + namespaces)) and reads the dispatcher's
connection count. While the daemon is starting there is no store yet and only
the daemon's state is reported.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kvstore.store_api import ManagedStore, StoreStats

STATES = ("starting", "serving", "draining", "stopping", "stopped")
TIER_COUNTERS = (
    ("hits", "Blocks served from the tier"),
    ("misses", "Blocks looked for and not found in the tier"),
    ("evictions", "Blocks evicted from the tier"),
    ("demotions", "Blocks moved from the tier to the one below"),
    ("promotions", "Blocks moved up into the tier"),
    ("bytes_in", "Bytes written into the tier"),
    ("bytes_out", "Bytes read out of the tier"),
    ("errors", "I/O errors of the tier"),
)


class StoreCollector:
    """Collects ``kvstore_tier_*``, ``kvstore_namespace_*``, pins, connections and state."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        daemon = self.daemon
        state = GaugeMetricFamily("kvstore_state", "1 for the daemon's current state",
                                  labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if daemon.state == name else 0.0)
        yield state
        server = daemon.server
        if server is not None:
            dispatcher = server.dispatcher
            yield GaugeMetricFamily("kvstore_connections_open", "Client connections open",
                                    value=dispatcher.connections)
            yield GaugeMetricFamily("kvstore_requests_inflight", "Requests being served",
                                    value=dispatcher.inflight)
        store: ManagedStore | None = daemon.store
        if store is None or daemon.state in ("stopping", "stopped"):
            return
        stats = store.stats()
        yield from self._tiers(store, stats)
        yield from self._namespaces(stats)
        yield GaugeMetricFamily("kvstore_pinned_bytes", "Bytes pinned resident by the admin API",
                                value=store.pinned_bytes)
        yield GaugeMetricFamily("kvstore_pin_budget_bytes", "Bytes the admin API may pin",
                                value=store.pin_budget_bytes)
        yield GaugeMetricFamily("kvstore_draining", "1 while writes are refused (read-only)",
                                value=1.0 if store.read_only else 0.0)

    def _tiers(self, store: ManagedStore, stats: StoreStats):
        capacity = GaugeMetricFamily("kvstore_tier_capacity_bytes", "Tier capacity",
                                     labels=["tier"])
        used = GaugeMetricFamily("kvstore_tier_used_bytes", "Bytes in use in the tier",
                                 labels=["tier"])
        blocks = GaugeMetricFamily("kvstore_tier_blocks", "Blocks held by the tier", labels=["tier"])
        degraded = GaugeMetricFamily("kvstore_tier_degraded", "1 when the tier is failing",
                                     labels=["tier"])
        counters = {
            name: CounterMetricFamily(f"kvstore_tier_{name}", doc, labels=["tier"])
            for name, doc in TIER_COUNTERS
        }
        policies = store.policy_names()
        policy = GaugeMetricFamily("kvstore_tier_policy", "1 for the tier's eviction policy",
                                   labels=["tier", "policy"])
        for t in stats.tiers:
            capacity.add_metric([t.name], t.capacity_bytes)
            used.add_metric([t.name], t.used_bytes)
            blocks.add_metric([t.name], t.blocks)
            degraded.add_metric([t.name], 1.0 if t.degraded else 0.0)
            for name, family in counters.items():
                family.add_metric([t.name], getattr(t, name))
            if t.name in policies:
                policy.add_metric([t.name, policies[t.name]], 1.0)
        yield from (capacity, used, blocks, degraded, policy, *counters.values())

    def _tenant_labels(self) -> bool:
        return bool(getattr(self.daemon.config, "metrics_tenant_labels", False))

    def _namespaces(self, stats: StoreStats):
        labels = ["namespace", "model", "tenant"]
        blocks = GaugeMetricFamily("kvstore_namespace_blocks", "Blocks cached, any tier", labels=labels)
        hits = CounterMetricFamily("kvstore_namespace_hits", "Blocks served", labels=labels)
        misses = CounterMetricFamily("kvstore_namespace_misses", "Blocks read for and missing",
                                     labels=labels)
        lookup_hits = CounterMetricFamily("kvstore_namespace_lookup_hits",
                                          "Blocks found by lookups", labels=labels)
        lookup_misses = CounterMetricFamily("kvstore_namespace_lookup_misses",
                                            "Blocks looked up and not found", labels=labels)
        for ns in stats.namespaces:
            tenant = ns.spec.tenant if self._tenant_labels() else ""  # opt-in: names are data
            key = [ns.fingerprint, ns.spec.layout.model_id, tenant]
            blocks.add_metric(key, ns.blocks)
            hits.add_metric(key, ns.hits)
            misses.add_metric(key, ns.misses)
            lookup_hits.add_metric(key, ns.lookup_hits)
            lookup_misses.add_metric(key, ns.lookup_misses)
        yield from (blocks, hits, misses, lookup_hits, lookup_misses)
