"""The Admin service against a real daemon: each RPC's effect seen through a real tcp client."""

from __future__ import annotations

import json

import grpc
import pytest

from kvstore.admin import admin_pb2 as pb
from kvstore.errors import Draining
from kvstore.transport.remote import RemoteStore
from tests.admin.conftest import daemon_config, small_store
from tests.admin.helpers import payloads, small_spec, tokens_for


def put(client, ns, spec, seed, nblocks=2):
    tokens = tokens_for(seed, nblocks)
    assert client.put(ns, tokens, payloads(spec, tokens)) == len(tokens)
    return tokens


def flood(client, ns, spec, first_seed, count=150):
    """Far more than the daemon's 64 KiB CPU tier holds: every put evicts."""
    for seed in range(first_seed, first_seed + count):
        put(client, ns, spec, seed)


def status_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


def test_stats_and_namespaces(admin, client):
    spec = small_spec()
    ns = client.register(spec)
    tokens = put(client, ns, spec, 1, 3)
    assert client.get(ns, tokens)[0] == len(tokens)
    stats = admin.GetStats(pb.GetStatsRequest())
    (cpu,) = stats.tiers
    assert (cpu.name, cpu.policy, cpu.capacity_bytes) == ("cpu", "lru", 64 << 10)
    assert cpu.blocks == 3 and cpu.used_bytes == 3 * spec.block_bytes and cpu.hits == 3
    (n,) = stats.namespaces
    assert n.namespace.id == ns.hex() and n.namespace.model_id == "tiny"
    assert (n.blocks, n.hits, n.namespace.block_bytes) == (3, 3, spec.block_bytes)
    assert stats.server.state == "serving" and stats.server.connections == 1
    assert stats.server.requests >= 4
    listed = admin.ListNamespaces(pb.ListNamespacesRequest()).namespaces
    assert [x.namespace.id for x in listed] == [ns.hex()]


def test_evict_namespace_and_prefix(admin, client):
    spec, other = small_spec(), small_spec("other")
    ns, ns2 = client.register(spec), client.register(other)
    a, b = put(client, ns, spec, 1, 3), put(client, ns, spec, 2, 2)
    keep = put(client, ns2, other, 3, 2)
    reply = admin.Evict(pb.EvictRequest(namespace=ns.hex(), tokens=a[:8].tolist()))
    assert (reply.blocks, reply.skipped) == (2, 0)
    assert client.lookup(ns, a) == 4 and client.lookup(ns, b) == len(b)
    reply = admin.Evict(pb.EvictRequest(namespace=ns.hex()[:8]))  # a unique prefix of the id
    assert reply.blocks == 3 and reply.bytes == 3 * spec.block_bytes
    assert client.lookup(ns, a) == 0 and client.lookup(ns, b) == 0
    assert client.get(ns, b) == (0, [])
    assert client.lookup(ns2, keep) == len(keep)


def test_pinned_prefix_survives_pressure(running):
    daemon = running(daemon_config(pin_budget="2KiB"))
    with grpc.insecure_channel(daemon.address("admin")) as ch:
        from kvstore.admin.admin_pb2_grpc import AdminStub

        admin = AdminStub(ch)
        client = RemoteStore.connect(daemon.url, strict=True)
        spec = small_spec()
        ns = client.register(spec)
        pinned = put(client, ns, spec, 1, 4)
        prefix = pb.Prefix(namespace=ns.hex(), tokens=pinned.tolist())
        reply = admin.Pin(pb.PinRequest(prefix=prefix))
        assert reply.pin.tokens == len(pinned) and reply.pinned_bytes == 4 * spec.block_bytes
        assert reply.budget_bytes == 2048
        flood(client, ns, spec, 100)
        assert admin.GetStats(pb.GetStatsRequest()).tiers[0].evictions > 0
        assert client.lookup(ns, pinned) == len(pinned)
        more = put(client, ns, spec, 2, 2)
        over = pb.Prefix(namespace=ns.hex(), tokens=more.tolist())
        assert status_of(admin.Pin, pb.PinRequest(prefix=over)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert admin.Unpin(pb.UnpinRequest(prefix=prefix)).pinned_bytes == 0
        assert status_of(admin.Unpin, pb.UnpinRequest(prefix=prefix)) == grpc.StatusCode.NOT_FOUND
        flood(client, ns, spec, 300)
        assert client.lookup(ns, pinned) == 0
        client.close()


def test_set_eviction_policy_takes_effect(admin, client):
    spec = small_spec()
    ns = client.register(spec)
    reply = admin.SetEvictionPolicy(pb.SetEvictionPolicyRequest(tier="cpu", policy="mru"))
    assert (reply.previous, reply.policy) == ("lru", "mru")
    assert admin.GetStats(pb.GetStatsRequest()).tiers[0].policy == "mru"
    first = put(client, ns, spec, 1000)
    flood(client, ns, spec, 0)  # MRU evicts the most recent blocks (at each write or just
    assert client.lookup(ns, first) == len(first)  # ahead of the next): never the first's,
    assert admin.GetStats(pb.GetStatsRequest()).tiers[0].evictions > 0  # which LRU drops
    bad = pb.SetEvictionPolicyRequest(tier="cpu", policy="no-such-policy")
    assert status_of(admin.SetEvictionPolicy, bad) == grpc.StatusCode.INVALID_ARGUMENT
    config = json.loads(admin.GetConfig(pb.GetConfigRequest()).config_json)
    assert config["store"]["cpu_policy"] == "mru"


def test_drain_refuses_puts_over_tcp_and_keeps_reads(admin, client, daemon):
    spec = small_spec()
    ns = client.register(spec)
    tokens = put(client, ns, spec, 1, 3)
    assert admin.Drain(pb.DrainRequest()).draining
    fresh = tokens_for(2, 2)
    with pytest.raises(Draining):
        client.put(ns, fresh, payloads(spec, fresh))
    n, blocks = client.get(ns, tokens)
    assert n == len(tokens) and [bytes(b) for b in blocks] == payloads(spec, tokens)
    assert admin.GetStats(pb.GetStatsRequest()).server.draining
    assert not admin.Drain(pb.DrainRequest(resume=True)).draining
    assert client.put(ns, fresh, payloads(spec, fresh)) == len(fresh)


def test_drain_with_shutdown_stops_the_daemon(admin, daemon):
    reply = admin.Drain(pb.DrainRequest(shutdown=True))
    assert reply.draining and reply.shutting_down
    daemon.thread.join(20)
    assert not daemon.thread.is_alive() and daemon.daemon.state == "stopped"


def test_bad_arguments(admin, client):
    spec = small_spec()
    ns = client.register(spec)
    tokens = put(client, ns, spec, 1, 2)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(admin.Evict, pb.EvictRequest()) == invalid
    assert status_of(admin.Evict, pb.EvictRequest(namespace="not-hex!")) == invalid
    assert status_of(admin.Evict, pb.EvictRequest(namespace=ns.hex(), tokens=[1, 2])) == invalid
    assert status_of(admin.Evict, pb.EvictRequest(namespace=ns.hex(), extra=b"x")) == invalid
    unknown = pb.EvictRequest(namespace="ab" * 16)
    assert status_of(admin.Evict, unknown) == grpc.StatusCode.NOT_FOUND
    short = pb.Prefix(namespace=ns.hex(), tokens=tokens[:3].tolist())
    assert status_of(admin.Pin, pb.PinRequest(prefix=short)) == invalid
    assert status_of(admin.Pin, pb.PinRequest(prefix=pb.Prefix(namespace=ns.hex()))) == invalid
    missing = pb.Prefix(namespace=ns.hex(), tokens=tokens_for(9, 2).tolist())
    assert status_of(admin.Pin, pb.PinRequest(prefix=missing)) == grpc.StatusCode.NOT_FOUND
    assert status_of(admin.SetEvictionPolicy,
                     pb.SetEvictionPolicyRequest(tier="tape", policy="lru")) == invalid
    assert status_of(admin.SetEvictionPolicy, pb.SetEvictionPolicyRequest()) == invalid
    assert status_of(admin.Drain, pb.DrainRequest(resume=True, shutdown=True)) == invalid


def test_get_config_and_flush(admin, daemon):
    reply = admin.GetConfig(pb.GetConfigRequest())
    config = json.loads(reply.config_json)
    assert config["admin"] == "127.0.0.1:0" and config["cpu_bytes"] == 64 << 20
    assert reply.admin == daemon.address("admin") and reply.metrics == daemon.address("metrics")
    assert list(reply.urls) == [daemon.url] and "lru" in reply.policies
    assert not admin.Flush(pb.FlushRequest()).ssd  # this daemon has no SSD tier


def test_admin_token(running, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text("# the admin token\ns3cret-admin\n")
    token_file.chmod(0o600)
    daemon = running(daemon_config(admin_token_file=str(token_file)), small_store())
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kvstore.admin.admin_pb2_grpc import AdminStub

    with grpc.insecure_channel(daemon.address("admin")) as ch:
        admin = AdminStub(ch)
        request = pb.GetStatsRequest()
        unauth = grpc.StatusCode.UNAUTHENTICATED
        assert status_of(admin.GetStats, request) == unauth
        assert status_of(admin.GetStats, request,
                         metadata=[("authorization", "Bearer wrong")]) == unauth
        assert status_of(admin.Drain, pb.DrainRequest(shutdown=True)) == unauth
        ok = admin.GetStats(request, metadata=[("authorization", "Bearer s3cret-admin")])
        assert ok.server.state == "serving"
        health = health_pb2_grpc.HealthStub(ch)  # probes carry no token
        reply = health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
