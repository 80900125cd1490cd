"""ClusterBackend: ``KVClient.connect("etcd://HOST:PORT/NAME")``, many daemons as one store.

The client watches the cluster's membership in etcd (``MembershipView``) and
sends each request straight to the node that owns its prefix
(``kvstore.cluster.routing.Router``: rendezvous hashing of the prefix's first
block key; hot prefixes spread over their replicas): one hop per lookup.

Failures: every data request has a deadline (``timeout``, 1 s by default:
a lookup is worth less than a recompute) that covers its wait behind other
requests, the connect and the reply; payloads extend it by their size at a
floor rate, so a large transfer that moves is not cut. A node that times
out or cannot be reached opens its circuit breaker (``Breaker``): requests
skip it and go to the next candidate of the rendezvous ranking (a hot
prefix's other replica hits; another node misses, and the engine
recomputes) until a background probe gets an answer, with a backoff that
doubles from ``suspect_seconds``. A second candidate is tried only after a
fast failure (within a quarter of the deadline), so no call waits much
more than its deadline. Requests in flight to a node that leaves the
membership end at once. It never raises unless ``strict``.

Writes go to the first reachable node of the ranking, the order readers
try, so a put acknowledged during a partition is found by the next read.
Deletes go to every reachable node (replicas and stray copies).

etcd unreachable at connect: ``strict`` raises; otherwise the client starts
empty (every lookup misses) and fills in when etcd answers. etcd lost
later: the last known membership is used.

A ``BlockStore`` (no leases: payloads are copied, no zero-copy across
nodes); ``stats`` is a ``ClusterStats``, the sum of the nodes that answered.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

from kvstore.availability import OFFLINE, SoftFailures
from kvstore.client.cluster_stats import ClusterStats
from kvstore.cluster.breaker import Breaker
from kvstore.cluster.etcd import EtcdSession
from kvstore.cluster.membership import Membership, MembershipView
from kvstore.cluster.records import EtcdURL, NodeInfo
from kvstore.cluster.routing import Route, Router
from kvstore.errors import Unavailable
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import Alloc, Capabilities, PrefixHint, StoreStats
from kvstore.tokens import as_tokens, as_tokens_many
from kvstore.transport.remote import RemoteStore
from kvstore.transport.wire_client import default_alloc

log = logging.getLogger("kvstore.client.cluster")


class ClusterBackend:
    """Many daemons as one ``BlockStore``; see the module docstring."""

    capabilities = Capabilities(leases=False)

    def __init__(self, url: str, *, strict: bool = False, token: str | None = None,
                 tenant: str = "", timeout: float = 1.0, connect_wait: float = 5.0,
                 suspect_seconds: float = 0.25, route_blocks: int = 1,
                 schemes: tuple[str, ...] = ("tcp", "ucx"), resync_interval: float = 1.0,
                 admin_timeout: float = 30.0, probe_interval: float = 0.1,
                 conns_per_node: int = 8):
        self.url = EtcdURL.parse(url)
        self.availability = SoftFailures(strict, f"cluster {self.url.cluster}", log)
        self.token = token if token is not None else os.environ.get("KVSTORE_AUTH_TOKEN")
        self.tenant = tenant
        self.timeout = timeout
        self.admin_timeout = admin_timeout
        self.schemes = schemes
        self.suspect_seconds = suspect_seconds
        self.breaker = Breaker(base=suspect_seconds)
        self.router = Router(route_blocks)
        self._specs: dict[bytes, NamespaceSpec] = {}
        self._stores: dict[str, RemoteStore] = {}
        self._admin: dict[str, RemoteStore] = {}
        self._extra: dict[str, list[RemoteStore]] = {}  # more connections per node (_checkout)
        self._inuse: dict[int, int] = {}  # id(RemoteStore) -> requests using it
        self.conns_per_node = conns_per_node
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.session = EtcdSession(self.url.endpoint)
        self.view = MembershipView(self.session, self.url.cluster, resync_interval,
                                   on_change=self._on_membership)
        self.view.start(wait=connect_wait)
        if not self.view.etcd_ok:
            if strict:
                self.view.close()
                raise Unavailable(f"etcd at {self.url.endpoint} unreachable")
            log.warning("etcd at %s unreachable: every lookup misses until it answers",
                        self.url.endpoint)
        self.requests_by_node: dict[str, int] = {}
        self._prober = threading.Thread(target=self._probe_loop, args=(probe_interval,),
                                        name="kvstore-cluster-probe", daemon=True)
        self._prober.start()

    @property
    def strict(self) -> bool:
        return self.availability.strict

    # -- nodes ----------------------------------------------------------------------
    def nodes(self) -> dict[str, NodeInfo]:
        return dict(self.view.snapshot().nodes)

    def _new_store(self, url: str, timeout: float) -> RemoteStore:
        # retry_interval = the deadline: after a failed (re)connect or hello (a fresh
        # connection's namespace registration) the request itself fails at once.
        return RemoteStore(url, token=self.token, tenant=self.tenant, strict=True,
                           timeout=timeout, connect_timeout=min(2.0, timeout),
                           retry_interval=min(timeout, 2.0))

    def _store(self, node: NodeInfo, admin: bool = False) -> RemoteStore | None:
        """The node's first connection (probes, deletes) or its admin one (flush, stats)."""
        url = node.url_for(self.schemes)
        if url is None:
            return None
        key = f"{node.node_id} {url}"
        stores = self._admin if admin else self._stores
        with self._lock:
            rs = stores.get(key)
            fresh = rs is None
            if fresh:
                rs = stores[key] = self._new_store(url, self.admin_timeout if admin else self.timeout)
        if fresh:  # outside the lock: a silent node must not hold up the other threads
            for spec in list(self._specs.values()):
                rs.register(spec)
        return rs

    def _checkout(self, node: NodeInfo) -> RemoteStore | None:
        """A connection to ``node`` that no other request of this client is using.

        Requests run one at a time per connection, so each in-flight request
        gets a connection of its own (up to ``conns_per_node``, then the least
        busy is shared): a slow request never holds up another one.
        """
        first = self._store(node)
        if first is None:
            return None
        url = node.url_for(self.schemes)
        key = f"{node.node_id} {url}"
        with self._lock:
            pool = [first, *self._extra.get(key, [])]
            for rs in pool:
                if self._inuse.get(id(rs), 0) == 0:
                    self._inuse[id(rs)] = 1
                    return rs
            if len(pool) >= self.conns_per_node:
                rs = min(pool, key=lambda r: self._inuse.get(id(r), 0))
                self._inuse[id(rs)] += 1
                return rs
            rs = self._new_store(url, self.timeout)
            self._extra.setdefault(key, []).append(rs)
            self._inuse[id(rs)] = 1
        for spec in list(self._specs.values()):
            rs.adopt(spec)  # registered by its first request's connect: one deadline, not two
        return rs

    def _checkin(self, rs: RemoteStore) -> None:
        with self._lock:
            left = self._inuse.get(id(rs), 1) - 1
            if left > 0:
                self._inuse[id(rs)] = left
            else:
                self._inuse.pop(id(rs), None)

    def _on_membership(self, membership: Membership) -> None:
        """Nodes that left: abandon their requests in flight, forget their connections."""
        with self._lock:
            gone: dict[str, list[RemoteStore]] = {}
            for stores in (self._stores, self._admin, self._extra):
                for k in [k for k in stores if k.split(" ", 1)[0] not in membership.nodes]:
                    rs = stores.pop(k)
                    gone.setdefault(k, []).extend(rs if isinstance(rs, list) else [rs])
        self.breaker.forget(membership.nodes)
        for key, stores in gone.items():
            node_id = key.split(" ", 1)[0]
            log.info("node %s left the cluster: abandoning its requests", node_id)
            for rs in stores:
                rs.abort(f"node {node_id} left cluster {self.url.cluster}")

    def _probe_loop(self, interval: float) -> None:
        """Ping the nodes whose breaker is open and due; an answer closes it."""
        while not self._closing.wait(interval):
            nodes = self.view.snapshot().nodes
            for node_id in self.breaker.due():
                node = nodes.get(node_id)
                rs = self._store(node) if node is not None else None
                if rs is None:
                    self.breaker.succeeded(node_id)  # gone: nothing to skip
                    continue
                try:
                    rs.ping()
                    ok = True
                except OFFLINE:
                    ok = False
                self.breaker.probed(node_id, ok)
                if ok:
                    log.info("node %s answers again", node_id)

    def route(self, ns: bytes, tokens, extra: bytes = b"") -> Route:
        spec = self._specs[ns]
        return self.router.route(self.view.snapshot(), ns, tokens, spec.block_tokens, extra)

    def _attempt(self, ns: bytes, tokens, extra: bytes, call, default, attempts: int = 0):
        """Run ``call(store)`` on the route's candidates in turn, skipping suspects.

        ``attempts`` 0: as many nodes as may hold the prefix, plus one (at least 2).
        """
        route = self.route(ns, tokens, extra)
        attempts = attempts or max(2, route.replicas + 1)
        start = time.monotonic()
        tried = 0
        last: BaseException | None = None
        for node in route.candidates:
            if tried >= attempts:
                break
            if tried and time.monotonic() - start > self.timeout / 4:
                break  # the last one was slow to fail: a miss now beats a second wait
            if self.breaker.is_open(node.node_id):
                continue
            rs = self._checkout(node)
            if rs is None:
                continue
            tried += 1
            try:
                result = call(rs)
            except OFFLINE as exc:
                self._checkin(rs)
                backoff = self.breaker.failed(node.node_id)
                log.info("node %s unreachable (%s); skipped for %.2fs, trying the next",
                         node.node_id, exc, backoff)
                last = exc
                continue
            except BaseException:
                self._checkin(rs)
                raise
            self._checkin(rs)
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
            stores = [*self._stores.values(), *(r for p in self._extra.values() for r in p)]
        for rs in stores:
            rs.register(spec)
        return ns

    def namespaces(self) -> list[NamespaceSpec]:
        return list(self._specs.values())

    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        toks = as_tokens(tokens)
        return self._attempt(ns, toks, extra, lambda rs: rs.lookup(ns, toks, extra), 0)

    def lookup_many(self, ns: bytes, tokens_list, extras=None) -> list[int]:
        """``lookup`` of each token array: one ``lookup_many`` per owning node.

        Requests whose routes rank the nodes alike go together (the same
        owner, the same fallbacks), so each group fails over as its single
        lookups would.
        """
        toks = as_tokens_many(tokens_list)
        extras = list(extras) if extras is not None else [b""] * len(toks)
        groups: dict[tuple, list[int]] = {}
        for i, (t, e) in enumerate(zip(toks, extras)):
            route = self.route(ns, t, e)
            key = (tuple(n.node_id for n in route.candidates), route.replicas)
            groups.setdefault(key, []).append(i)
        hits = [0] * len(toks)
        for idx in groups.values():
            sub_t, sub_e = [toks[i] for i in idx], [extras[i] for i in idx]
            got = self._attempt(ns, sub_t[0], sub_e[0],
                                lambda rs, t=sub_t, e=sub_e: rs.lookup_many(ns, t, e), [0] * len(idx))
            for i, n in zip(idx, got):
                hits[i] = n
        return hits

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
        """Delete on every reachable node (the owner, replicas, stray copies); the most any had."""
        toks = as_tokens(tokens)
        self.route(ns, toks, extra)  # an unknown namespace raises here
        best, answered, last = 0, 0, None
        for node_id, node in self.nodes().items():
            if self.breaker.is_open(node_id):
                continue
            rs = self._store(node)
            if rs is None:
                continue
            try:
                best = max(best, int(rs.delete(ns, toks, extra)))
                answered += 1
            except OFFLINE as exc:
                self.breaker.failed(node_id)
                last = exc
        if answered == 0:
            why = f"no node of cluster {self.url.cluster} answered" + (f" ({last})" if last else "")
            return self.availability.failed(Unavailable(why), 0)
        self.availability.answered()
        return best

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
        best, reached, last = 0, 0, None
        for node in targets:  # grows by a spare for each owner that is not reached
            rs = None if self.breaker.is_open(node.node_id) else self._store(node)
            try:
                if rs is not None:
                    best = max(best, rs.hint(ns, toks, hint, extra))
                    reached += 1
                    continue
            except OFFLINE as exc:
                backoff = self.breaker.failed(node.node_id)
                log.info("node %s unreachable (%s); hint dropped there, skipped for %.2fs",
                         node.node_id, exc, backoff)
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
            rs = self._store(node, admin=True)
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
            if self.breaker.is_open(node_id):
                continue
            rs = self._store(node, admin=True)
            if rs is None:
                continue
            try:
                out[node_id] = rs.stats()
            except OFFLINE:
                continue
        return ClusterStats.combine(self.url.cluster, out)

    def close(self) -> None:
        self._closing.set()
        self.view.close()
        with self._lock:
            stores = [*self._stores.values(), *self._admin.values(),
                      *(r for p in self._extra.values() for r in p)]
            self._stores, self._admin, self._extra = {}, {}, {}
        for rs in stores:
            try:
                rs.close()
            except Exception:  # pragma: no cover - closing anyway
                pass
