"""The Prometheus endpoint of a real daemon, scraped over HTTP while a tcp client makes traffic."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvstore.admin import admin_pb2 as pb
from kvstore.errors import NotFound
from tests.admin.helpers import payloads, small_spec, tokens_for


def scrape(daemon) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    url = f"http://{daemon.address('metrics')}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_traffic(daemon, client, admin):
    spec = small_spec()
    ns = client.register(spec)
    before = scrape(daemon)
    assert value(before, "kvstore_state", state="serving") == 1.0
    assert value(before, "kvstore_connections_open") == 1.0
    assert value(before, "kvstore_tier_capacity_bytes", tier="cpu") == 64 << 10
    puts = [tokens_for(seed, 2) for seed in range(150)]  # more than the tier holds
    for tokens in puts:
        client.put(ns, tokens, payloads(spec, tokens))
    n, _ = client.get(ns, puts[-1])
    assert n == len(puts[-1])
    assert client.get(ns, tokens_for(999, 2)) == (0, [])
    with pytest.raises(NotFound):
        client.lookup(b"\x01" * 16, puts[0])  # never registered on this connection
    after = scrape(daemon)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("kvstore_requests_total", carrier="tcp", op="put") == 150
    assert moved("kvstore_requests_total", carrier="tcp", op="get") == 2
    assert moved("kvstore_request_seconds_count", op="put") == 150
    assert value(after, "kvstore_request_seconds_bucket", op="put", le="+Inf") >= 150
    assert moved("kvstore_transport_read_bytes_total", carrier="tcp") == 300 * spec.block_bytes
    assert moved("kvstore_transport_written_bytes_total", carrier="tcp") == 2 * spec.block_bytes
    assert moved("kvstore_errors_total", code="not_found") == 1
    assert moved("kvstore_tier_hits_total", tier="cpu") == 2
    assert moved("kvstore_tier_evictions_total", tier="cpu") > 0
    assert value(after, "kvstore_tier_used_bytes", tier="cpu") > 0
    assert value(after, "kvstore_tier_blocks", tier="cpu") > 0
    key = {"namespace": ns.hex(), "model": "tiny", "tenant": ""}
    assert value(after, "kvstore_namespace_misses_total", **key) == 2
    assert value(after, "kvstore_tier_policy", tier="cpu", policy="lru") == 1.0
    admin.Drain(pb.DrainRequest())
    assert value(scrape(daemon), "kvstore_draining") == 1.0


def test_request_metrics_histogram_is_cumulative():
    from prometheus_client import CollectorRegistry, generate_latest

    from kvstore.metrics.request_metrics import RequestMetrics
    from kvstore.transport.dispatch import Outcome
    from kvstore.transport.messages import Op, Reply

    class Req:
        op, sizes = Op.GET, []

    metrics = RequestMetrics()
    for seconds in (20e-6, 20e-6, 3e-3, 9.0):  # two in the first bucket, one mid, one past 5 s
        metrics.request("shm", Req, Outcome(Reply(1, sizes=[100])), seconds)
    metrics.request("shm", Req, None, 1e-3)  # the connection broke mid-request
    registry = CollectorRegistry()
    registry.register(metrics)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert value(samples, "kvstore_request_seconds_bucket", op="get", le="5e-05") == 2
    assert value(samples, "kvstore_request_seconds_bucket", op="get", le="0.005") == 4
    assert value(samples, "kvstore_request_seconds_bucket", op="get", le="5.0") == 4
    assert value(samples, "kvstore_request_seconds_bucket", op="get", le="+Inf") == 5
    assert value(samples, "kvstore_request_seconds_count", op="get") == 5
    assert value(samples, "kvstore_requests_total", carrier="shm", op="get") == 5
    assert value(samples, "kvstore_transport_written_bytes_total", carrier="shm") == 400
    assert value(samples, "kvstore_errors_total", code="unavailable") == 1
