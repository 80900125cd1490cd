"""ClusterBackend: ``KVClient.connect("etcd://HOST:PORT/NAME")``, many daemons as one store.

The client watches the cluster's membership in etcd (``MembershipView``) and
sends each request straight to the node that owns its prefix
(``kvstore.cluster.routing.Router``: rendezvous hashing of the prefix's first
block key; hot prefixes spread over their replicas): one hop per lookup.

Failures: a node that cannot be reached is skipped for ``suspect_seconds``
and the request goes to the next candidate (a hot prefix's other replica
hits; another node misses, and the engine recomputes); it never raises
unless ``strict``. etcd unreachable at connect: ``strict`` raises; otherwise
the client starts empty (every lookup misses) and fills in when etcd
answers. etcd lost later: the last known membership is used.

A ``BlockStore`` (no leases: payloads are copied, no zero-copy across
nodes); ``stats`` is a ``ClusterStats``, the sum of the nodes that answered.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from kvstore.availability import OFFLINE, SoftFailures
from kvstore.cluster.etcd import EtcdSession
from kvstore.cluster.membership import MembershipView
from kvstore.cluster.records import EtcdURL, NodeInfo
from kvstore.cluster.routing import Route, Router
from kvstore.errors import Unavailable
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import (
    Alloc,
    Capabilities,
    NamespaceStats,
    PrefixHint,
    StoreStats,
    TierStats,
)
from kvstore.tokens import as_tokens
from kvstore.transport.remote import RemoteStore
from kvstore.transport.wire_client import default_alloc

log = logging.getLogger("kvstore.client.cluster")


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


class ClusterBackend:
    """Many daemons as one ``BlockStore``; see the module docstring."""

    capabilities = Capabilities(leases=False)

    def __init__(self, url: str, *, strict: bool = False, token: str | None = None,
                 tenant: str = "", timeout: float = 30.0, connect_wait: float = 5.0,
                 suspect_seconds: float = 1.0, route_blocks: int = 1,
                 schemes: tuple[str, ...] = ("tcp", "ucx"), resync_interval: float = 1.0):
        self.url = EtcdURL.parse(url)
        self.availability = SoftFailures(strict, f"cluster {self.url.cluster}", log)
        self.token = token if token is not None else os.environ.get("KVSTORE_AUTH_TOKEN")
        self.tenant = tenant
        self.timeout = timeout
        self.schemes = schemes
        self.suspect_seconds = suspect_seconds
        self.router = Router(route_blocks)
        self.session = EtcdSession(self.url.endpoint)
        self.view = MembershipView(self.session, self.url.cluster, resync_interval)
        self.view.start(wait=connect_wait)
        if not self.view.etcd_ok:
            if strict:
                self.view.close()
                raise Unavailable(f"etcd at {self.url.endpoint} unreachable")
            log.warning("etcd at %s unreachable: every lookup misses until it answers",
                        self.url.endpoint)
        self._specs: dict[bytes, NamespaceSpec] = {}
        self._stores: dict[str, RemoteStore] = {}
        self._suspect: dict[str, float] = {}
        self._lock = threading.Lock()
        self.requests_by_node: dict[str, int] = {}

    @property
    def strict(self) -> bool:
        return self.availability.strict

    # -- nodes ----------------------------------------------------------------------
    def nodes(self) -> dict[str, NodeInfo]:
        return dict(self.view.snapshot().nodes)

    def _store(self, node: NodeInfo) -> RemoteStore | None:
        url = node.url_for(self.schemes)
        if url is None:
            return None
        key = f"{node.node_id} {url}"
        with self._lock:
            rs = self._stores.get(key)
            if rs is None:
                rs = self._stores[key] = RemoteStore(
                    url, token=self.token, tenant=self.tenant, strict=True,
                    timeout=self.timeout, connect_timeout=2.0, retry_interval=0.5,
                )
                for spec in self._specs.values():
                    rs.register(spec)
        return rs

    def route(self, ns: bytes, tokens, extra: bytes = b"") -> Route:
        spec = self._specs[ns]
        return self.router.route(self.view.snapshot(), ns, tokens, spec.block_tokens, extra)

    def _attempt(self, ns: bytes, tokens, extra: bytes, call, default, attempts: int = 0):
        """Run ``call(store)`` on the route's candidates in turn, skipping suspects.

        ``attempts`` 0: as many nodes as may hold the prefix, plus one (at least 2).
        """
        route = self.route(ns, tokens, extra)
        attempts = attempts or max(2, route.replicas + 1)
        now = time.monotonic()
        tried = 0
        last: BaseException | None = None
        for node in route.candidates:
            if tried >= attempts:
                break
            if self._suspect.get(node.node_id, 0.0) > now:
                continue
            rs = self._store(node)
            if rs is None:
                continue
            tried += 1
            try:
                result = call(rs)
            except OFFLINE as exc:
                self._suspect[node.node_id] = time.monotonic() + self.suspect_seconds
                log.info("node %s unreachable (%s); trying the next", node.node_id, exc)
                last = exc
                continue
            self.requests_by_node[node.node_id] = self.requests_by_node.get(node.node_id, 0) + 1
            self.availability.answered()
            return result
        why = f"no node of cluster {self.url.cluster} answered" + (f" ({last})" if last else "")
        return self.availability.failed(Unavailable(why), default)

    # -- the BlockStore surface ---------------------------------------------------------
    def register(self, spec: NamespaceSpec) -> bytes:
        spec = dataclasses.replace(spec, tenant=self.tenant)
        ns = spec.fingerprint
        self._specs[ns] = spec
        with self._lock:
            stores = list(self._stores.values())
        for rs in stores:
            rs.register(spec)
        return ns

    def namespaces(self) -> list[NamespaceSpec]:
        return list(self._specs.values())

    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        toks = as_tokens(tokens)
        return self._attempt(ns, toks, extra, lambda rs: rs.lookup(ns, toks, extra), 0)

    def get(self, ns: bytes, tokens, extra: bytes = b""):
        toks = as_tokens(tokens)
        return self._attempt(ns, toks, extra, lambda rs: rs.get(ns, toks, extra), (0, []))

    def get_into(self, ns: bytes, tokens, alloc: Alloc = default_alloc, extra: bytes = b""):
        toks = as_tokens(tokens)
        return self._attempt(ns, toks, extra, lambda rs: rs.get_into(ns, toks, alloc, extra),
                             (0, None))

    def put(self, ns: bytes, tokens, payloads, extra: bytes = b"") -> int:
        toks = as_tokens(tokens)
        blocks = [payloads[i] for i in range(len(payloads))]  # lazily encoded: once only
        return self._attempt(ns, toks, extra, lambda rs: rs.put(ns, toks, blocks, extra), 0, 2)

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        toks = as_tokens(tokens)
        return self._attempt(ns, toks, extra, lambda rs: rs.delete(ns, toks, extra), 0, 1)

    def hint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int:
        """Send ``hint`` to every node that holds the prefix: its owner (a hot prefix's
        replicas too), and for each of them that cannot be reached the next node in the
        ranking (where a put went in its stead). Returns the most tokens it applied to;
        with no node reached it is dropped, unless strict (it only reorders evictions)."""
        toks = as_tokens(tokens)
        route = self.route(ns, toks, extra)
        if route.route_key is None:  # shorter than the routing blocks: nothing is cached
            return 0
        targets, spares = list(route.owners()), list(route.candidates[route.replicas:])
        now = time.monotonic()
        best, reached, last = 0, 0, None
        for node in targets:  # grows by a spare for each owner that is not reached
            rs = self._store(node) if self._suspect.get(node.node_id, 0.0) <= now else None
            try:
                if rs is not None:
                    best = max(best, rs.hint(ns, toks, hint, extra))
                    reached += 1
                    continue
            except OFFLINE as exc:
                self._suspect[node.node_id] = time.monotonic() + self.suspect_seconds
                log.info("node %s unreachable (%s); hint dropped there", node.node_id, exc)
                last = exc
            if spares:
                targets.append(spares.pop(0))
        if reached:
            self.availability.answered()
            return best
        why = f"no node of cluster {self.url.cluster} took the hint" + (f" ({last})" if last else "")
        return self.availability.failed(Unavailable(why), 0)

    def flush(self) -> None:
        for node in self.nodes().values():
            rs = self._store(node)
            if rs is None:
                continue
            try:
                rs.flush()
            except OFFLINE as exc:
                if self.strict:
                    raise
                log.info("flush at %s failed: %s", node.node_id, exc)

    def stats(self) -> ClusterStats:
        """The nodes' stats summed (``nodes``: each one's); unreachable nodes are left out."""
        out: dict[str, StoreStats] = {}
        for node_id, node in self.nodes().items():
            rs = self._store(node)
            if rs is None:
                continue
            try:
                out[node_id] = rs.stats()
            except OFFLINE:
                continue
        return ClusterStats.combine(self.url.cluster, out)

    def close(self) -> None:
        self.view.close()
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for rs in stores:
            try:
                rs.close()
            except Exception:  # pragma: no cover - closing anyway
                pass
