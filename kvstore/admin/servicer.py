"""The ``kvstore.admin.v1.Admin`` methods over a running Daemon.

Each method runs on a gRPC worker thread and calls the store directly (the
store is thread-safe). Store errors become gRPC status codes (``STATUS_OF``):
bad arguments INVALID_ARGUMENT, unknown namespace / prefix / pin NOT_FOUND,
a pin over the budget RESOURCE_EXHAUSTED, a daemon starting or stopping
UNAVAILABLE.
"""

from __future__ import annotations

import functools
import json
import logging
import time

import grpc

import kvstore
from kvstore.admin import admin_pb2 as pb
from kvstore.admin import admin_pb2_grpc as pb_grpc
from kvstore.admin.convert import (
    namespace_message,
    pin_message,
    prefix_of,
    resolve_namespace,
    tier_message,
    tokens_of,
)
from kvstore.errors import ErrorCode, InvalidArgument, KVStoreError, Unavailable
from kvstore.eviction.registry import OFFLINE, available_policies
from kvstore.store_api import ManagedStore

log = logging.getLogger("kvstore.admin")

STATUS_OF = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.LAYOUT_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.PROTOCOL: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.CAPACITY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DRAINING: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def rpc(method):
    """Map store errors to status codes; anything else is INTERNAL (and logged)."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except KVStoreError as exc:
            status = STATUS_OF.get(exc.code, grpc.StatusCode.INTERNAL)
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            context.abort(status, message or type(exc).__name__)
        except Exception as exc:
            log.exception("admin %s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return wrapper


def tenant_messages(store) -> list:
    """Per tenant: bytes used (blocks and write leases) and quotas."""
    usage = store.tenant_usage()
    return [pb.TenantStats(tenant=t, cpu_used_bytes=u["cpu_used"], cpu_quota_bytes=u["cpu_quota"],
                           ssd_used_bytes=u["ssd_used"], ssd_quota_bytes=u["ssd_quota"])
            for t, u in usage.items()]


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, daemon, service):
        self.daemon = daemon
        self.service = service  # the AdminService: health status, bound addresses

    def _store(self) -> ManagedStore:
        store = self.daemon.store
        if store is None or self.daemon.state != "serving":
            raise Unavailable(f"the daemon is {self.daemon.state}")
        return store

    @property
    def _limits(self):
        return self.daemon.config.limits

    @rpc
    def GetStats(self, request, context):
        store = self._store()
        stats = store.stats()
        policies = store.policy_names()
        out = pb.GetStatsResponse(
            tiers=[tier_message(t, policies.get(t.name, "")) for t in stats.tiers],
            namespaces=[
                namespace_message(n, store.pinned_bytes_of(bytes.fromhex(n.fingerprint)))
                for n in stats.namespaces
            ],
            pins=pb.PinStats(pinned_bytes=store.pinned_bytes, budget_bytes=store.pin_budget_bytes,
                             pins=[pin_message(p) for p in store.pins()]),
        )
        out.tenants.extend(tenant_messages(store))
        server, d = out.server, self.daemon
        dispatcher = d.server.dispatcher
        server.connections, server.requests = dispatcher.connections, dispatcher.requests
        server.errors, server.inflight = dispatcher.errors, dispatcher.inflight
        server.draining, server.state = store.read_only, d.state  # wire name: writes refused
        server.uptime_seconds = time.time() - d.started_at
        return out

    @rpc
    def ListNamespaces(self, request, context):
        store = self._store()
        return pb.ListNamespacesResponse(namespaces=[
            namespace_message(n, store.pinned_bytes_of(bytes.fromhex(n.fingerprint)))
            for n in store.stats().namespaces
        ])

    @rpc
    def Evict(self, request, context):
        store = self._store()
        ns = resolve_namespace(store, request.namespace)
        tokens = tokens_of(request, self._limits)
        if len(tokens) == 0 and request.extra:
            raise InvalidArgument("extra names a prefix: give its tokens too")
        result = store.evict(ns, tokens if len(tokens) else None, bytes(request.extra))
        log.info("admin: evicted %d blocks of %s (%d kept)", result.blocks, ns.hex(),
                 result.skipped)
        return pb.EvictResponse(blocks=result.blocks, bytes=result.bytes, skipped=result.skipped)

    @rpc
    def Flush(self, request, context):
        store = self._store()
        started = time.perf_counter()
        store.flush()
        ssd = any(t.name == "ssd" for t in store.stats().tiers)
        return pb.FlushResponse(ssd=ssd, seconds=time.perf_counter() - started)

    @rpc
    def Pin(self, request, context):
        store = self._store()
        ns, tokens, extra = prefix_of(store, request.prefix, self._limits)
        info = store.pin(ns, tokens, extra)
        return pb.PinResponse(pin=pin_message(info), pinned_bytes=store.pinned_bytes,
                              budget_bytes=store.pin_budget_bytes)

    @rpc
    def Unpin(self, request, context):
        store = self._store()
        ns, tokens, extra = prefix_of(store, request.prefix, self._limits)
        info = store.unpin(ns, tokens, extra)
        return pb.UnpinResponse(pin=pin_message(info), pinned_bytes=store.pinned_bytes)

    @rpc
    def SetEvictionPolicy(self, request, context):
        store = self._store()
        if not request.tier or not request.policy:
            raise InvalidArgument("tier and policy are required")
        previous = store.set_policy(request.tier, request.policy)
        log.info("admin: %s tier policy %s -> %s", request.tier, previous, request.policy)
        return pb.SetEvictionPolicyResponse(tier=request.tier, previous=previous,
                                            policy=store.policy_names()[request.tier])

    @rpc
    def SetQuota(self, request, context):
        store = self._store()
        cpu = request.cpu_bytes if request.HasField("cpu_bytes") else None
        ssd = request.ssd_bytes if request.HasField("ssd_bytes") else None
        if cpu is None and ssd is None:
            raise InvalidArgument("give cpu_bytes and/or ssd_bytes")
        store.set_quota(request.tenant, cpu, ssd)
        log.info("admin: tenant %r quota cpu=%s ssd=%s", request.tenant, cpu, ssd)
        mine = [t for t in tenant_messages(store) if t.tenant == request.tenant]
        return pb.SetQuotaResponse(tenant=mine[0] if mine else None)

    @rpc
    def Drain(self, request, context):
        store = self._store()
        if request.resume and request.shutdown:
            raise InvalidArgument("resume and shutdown exclude each other")
        store.set_read_only(not request.resume)
        self.service.set_serving(not store.read_only)
        log.info("admin: writes %s", "refused (read-only)" if store.read_only else "accepted again")
        if request.shutdown:
            log.info("admin: shutdown requested")
            self.daemon.request_stop()
        return pb.DrainResponse(draining=store.read_only, shutting_down=request.shutdown)

    @rpc
    def GetConfig(self, request, context):
        d = self.daemon
        data = d.config.to_dict()
        if d.store is not None:  # run-time changes (policies, pin budget) included
            data["store"] = {**data.get("store", {}), **d.store.settings()}
        return pb.GetConfigResponse(
            config_json=json.dumps(data, default=str, sort_keys=True),
            source={k: str(v) for k, v in d.config.source.items()},
            urls=d.server.urls if d.server is not None else [],
            admin=self.service.address,
            metrics=next((s.address for s in d.services if getattr(s, "kind", "") == "metrics"),
                         ""),
            version=kvstore.__version__,
            policies=[p for p in available_policies() if p not in OFFLINE],
        )

    @rpc
    def GetCluster(self, request, context):
        service = next((s for s in self.daemon.services if getattr(s, "kind", "") == "cluster"),
                       None)
        if service is None:
            return pb.GetClusterResponse(enabled=False)
        return cluster_response(service)


def cluster_response(service) -> pb.GetClusterResponse:
    """The cluster service's view (kvstore.cluster.service) as the admin API's message."""
    membership = service.view.snapshot()
    node = service.node
    registration = service.registration
    nodes = [
        pb.ClusterNode(
            node_id=n.node_id, urls=n.urls, admin=n.admin, capacity_bytes=n.capacity_bytes,
            used_bytes=n.used_bytes, blocks=n.blocks, requests=n.requests,
            started_at=n.started_at, updated_at=n.updated_at, lease_id=f"{n.lease_id:x}",
            lease_ttl=n.lease_ttl, self=n.node_id == service.node_id,
        )
        for n in sorted(membership.nodes.values(), key=lambda n: n.node_id)
    ]
    hot = [pb.HotPrefix(route_key=h.route_hex, replicas=h.replicas, prefix_blocks=h.prefix_blocks,
                        hits=h.hits, marked_by=h.marked_by) for h in membership.hot.values()]
    return pb.GetClusterResponse(
        enabled=True, cluster=service.config.cluster, etcd=service.session.endpoint,
        etcd_ok=service.view.etcd_ok,
        registered=bool(registration is not None and registration.registered.is_set()),
        node_id=service.node_id, nodes=nodes, hot=hot,
        counters=dict(node.counters) if node is not None else {},
    )
