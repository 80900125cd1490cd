"""ClusterNode: what a daemon does as one node of a cluster (``kvstore serve --etcd ...``).

It is a daemon service (``kvstore.daemon.SERVICE_FACTORIES``, see
``kvstore.cluster.service``) and the dispatcher's cluster hook
(``StoreOps.cluster``: a ``kvstore.transport.cluster_hook.ClusterHook``). A
client that routes by itself (``etcd://``) sends each prefix to its owner,
and these hooks find nothing to do. They make every node a full entry to the
cluster for the rest:

- read (``lookup``, ``get``, a read lease) of a prefix this node lacks,
  whole or in part: ask the prefix's owners (the first ``peer_fanout``
  ranked nodes other than this one), concurrently; fetch the missing blocks
  from the one that has the most, store them here, then answer. So a block
  written through one node is readable through any node (prefill/decode
  disaggregation), a new owner after a membership change pulls what the old
  one has, and a replica fills itself on first use.
- write (``put``, a committed write lease) of a prefix this node does not
  own: forward the blocks to the owner before answering (read-your-writes
  across the cluster); the local copy stays as a cache.
- hint (``session_end``, ``keep_until``, ``priority``) of a prefix this node
  does not own: applied here (the local copy) and passed on to the owners
  (a hot prefix's replicas too), whose policies decide what the cluster keeps.
- hot prefixes: reads that hit are counted per routing key (``HotTracker``);
  a prefix that turns hot is marked in etcd (``HotPrefix``, replica count
  ``replicas``) and its shared blocks are pushed to the replicas at once,
  so they survive the loss of this node.

A peer's own requests (hello as ``kvstore-peer/...``) are answered from the
local store only: a miss is never bounced between nodes. Every failure to
reach a peer or etcd degrades to a miss, logged, never an error to the client.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kvstore.cluster.hot_prefixes import HotTracker
from kvstore.cluster.membership import MembershipView
from kvstore.cluster.peers import PeerPool, is_peer_client
from kvstore.cluster.records import HotPrefix, NodeInfo
from kvstore.cluster.registration import NodeRegistration
from kvstore.cluster.routing import Route, Router
from kvstore.errors import KVStoreError
from kvstore.namespace_spec import NamespaceSpec
from kvstore.tokens import full_blocks

log = logging.getLogger("kvstore.cluster")


class ClusterNode:
    def __init__(self, node_id: str, store, view: MembershipView,
                 registration: NodeRegistration | None, *, replicas: int = 2,
                 hot_threshold: int = 16, hot_window: float = 60.0, peer_fanout: int = 2,
                 route_blocks: int = 1, token: str | None = None):
        self.node_id = node_id
        self.store = store
        self.view = view
        self.registration = registration
        self.replicas = replicas
        self.peer_fanout = peer_fanout
        self.router = Router(route_blocks)
        self.peers = PeerPool(node_id, token)
        self.hot = HotTracker(hot_threshold, hot_window)
        self.counters = {"peer_lookups": 0, "peer_fetched_blocks": 0, "forwarded_puts": 0,
                         "forward_errors": 0, "peer_errors": 0, "hot_marked": 0,
                         "replicated_blocks": 0, "forwarded_hints": 0}
        self._tasks: set[asyncio.Task] = set()

    # -- routing --------------------------------------------------------------
    def _route(self, spec: NamespaceSpec, ns: bytes, tokens, extra: bytes) -> Route:
        return self.router.route(self.view.snapshot(), ns, tokens, spec.block_tokens, extra)

    def _others(self, route: Route) -> list[NodeInfo]:
        """The nodes to ask for a prefix this node lacks, most likely holder first."""
        want = max(route.replicas, 1) + self.peer_fanout - 1
        return [n for n in route.candidates if n.node_id != self.node_id][:want]

    def _owns(self, route: Route) -> bool:
        return any(n.node_id == self.node_id for n in route.owners())

    async def _peer_lookup(self, peer: NodeInfo, spec, tokens, extra) -> int:
        try:
            got = await self.peers.ready(peer, spec)
            if got is None:
                return 0
            rs, peer_ns = got
            return int(await rs.alookup(peer_ns, tokens, extra))
        except KVStoreError as exc:
            self.counters["peer_errors"] += 1
            log.debug("lookup at %s failed: %s", peer.node_id, exc)
            return 0

    # -- dispatcher hooks -------------------------------------------------------
    async def lookup(self, session, spec, ns, tokens, extra, local: int) -> int:
        """Leading tokens cached here or at the prefix's owners (``local``: here)."""
        whole = full_blocks(tokens, spec.block_tokens) * spec.block_tokens
        if is_peer_client(session.client) or local >= whole:
            return local
        route = self._route(spec, ns, tokens, extra)
        others = self._others(route)
        if not others:
            return local
        self.counters["peer_lookups"] += 1
        results = await asyncio.gather(*(self._peer_lookup(p, spec, tokens, extra) for p in others))
        return max([local, *results])

    async def fill(self, session, spec, ns, tokens, extra) -> None:
        """Before a read: fetch from a peer the blocks of ``tokens`` this node lacks."""
        if is_peer_client(session.client):
            return
        bt = spec.block_tokens
        whole = full_blocks(tokens, bt) * bt
        local = self.store.lookup(ns, tokens, extra)
        if local >= whole:
            return
        route = self._route(spec, ns, tokens, extra)
        others = self._others(route)
        if not others:
            return
        self.counters["peer_lookups"] += 1
        counts = await asyncio.gather(*(self._peer_lookup(p, spec, tokens, extra) for p in others))
        best = max(range(len(others)), key=lambda i: counts[i])
        if counts[best] <= local:
            return
        try:
            got = await self.peers.ready(others[best], spec)
            if got is None:
                return
            rs, peer_ns = got
            n, payloads = await rs.aget(peer_ns, tokens[: counts[best]], extra)
            if n > local and payloads:
                stored = self.store.put(ns, tokens[:n], payloads[: n // bt], extra)
                self.counters["peer_fetched_blocks"] += (stored - local) // bt
                log.debug("fetched %d tokens of a prefix from %s", n - local, others[best].node_id)
        except KVStoreError as exc:
            self.counters["peer_errors"] += 1
            log.info("fetch from %s failed (%s); serving what is here", others[best].node_id, exc)

    async def after_put(self, session, spec, ns, tokens, extra) -> None:
        """After a write here: forward the prefix to its owner when that is another node."""
        if is_peer_client(session.client):
            return
        route = self._route(spec, ns, tokens, extra)
        if not route.candidates or self._owns(route):
            return
        owner = route.candidates[0]
        try:
            loop = asyncio.get_running_loop()
            n, payloads = await loop.run_in_executor(None, self.store.get, ns, tokens, extra)
            if n == 0:
                return
            got = await self.peers.ready(owner, spec)
            if got is None:
                return
            rs, peer_ns = got
            await rs.aput(peer_ns, tokens[:n], payloads, extra)
            self.counters["forwarded_puts"] += 1
        except KVStoreError as exc:
            self.counters["forward_errors"] += 1
            log.info("forwarding a put to its owner %s failed (%s); kept here only",
                     owner.node_id, exc)

    async def after_hint(self, session, spec, ns, tokens, extra, hint, local: int) -> int:
        """After a hint applied here (to ``local`` tokens): pass it on to the prefix's owners
        (a hot prefix's replicas too) that are other nodes; the most tokens it applied to.

        Their policies are the ones that decide what the cluster keeps of the
        prefix; this node's copy is a cache. A peer that cannot be reached drops it.
        """
        if is_peer_client(session.client):
            return local
        route = self._route(spec, ns, tokens, extra)
        others = [n for n in route.owners() if n.node_id != self.node_id]
        if not others:
            return local
        got = await asyncio.gather(*(self._peer_hint(p, spec, tokens, extra, hint) for p in others))
        return max([local, *got])

    async def _peer_hint(self, peer: NodeInfo, spec, tokens, extra, hint) -> int:
        try:
            got = await self.peers.ready(peer, spec)
            if got is None:
                return 0
            rs, peer_ns = got
            n = int(await rs.ahint(peer_ns, tokens, hint, extra))
            self.counters["forwarded_hints"] += 1
            return n
        except KVStoreError as exc:
            self.counters["forward_errors"] += 1
            log.info("forwarding a hint to %s failed (%s); dropped there", peer.node_id, exc)
            return 0

    def record_hit(self, session, spec, ns, tokens, extra, hit: int) -> None:
        """A read served ``hit`` tokens: count it; a prefix that turns hot is replicated."""
        if hit <= 0 or is_peer_client(session.client) or self.replicas <= 1:
            return
        route_key = self.router.route_key(ns, tokens, spec.block_tokens, extra)
        if route_key is None:
            return
        membership = self.view.snapshot()
        if route_key.hex() in membership.hot:
            return
        cand = self.hot.record(route_key.hex(), tokens[:hit], spec.block_tokens)
        if cand is not None:
            self._spawn(self._mark_hot(spec, ns, extra, cand))

    # -- hot prefixes -------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark_hot(self, spec, ns, extra, cand) -> None:
        bt = spec.block_tokens
        tokens = cand.common_tokens
        entry = HotPrefix(cand.route_hex, self.replicas, full_blocks(tokens, bt), cand.hits,
                          self.node_id, time.time())
        loop = asyncio.get_running_loop()
        if self.registration is not None:
            marked = await loop.run_in_executor(None, self.registration.mark_hot,
                                                cand.route_hex, entry.to_json())
            if not marked:
                self.hot.forget(cand.route_hex)  # try again on a later hit
                return
        self.counters["hot_marked"] += 1
        log.info("prefix %s.. is hot (%d hits, %d blocks): replicating to %d nodes",
                 cand.route_hex[:12], cand.hits, entry.prefix_blocks, self.replicas)
        route = self._route(spec, ns, tokens, extra)
        n, payloads = await loop.run_in_executor(None, self.store.get, ns, tokens, extra)
        if n == 0:
            return
        ranking = list(route.candidates)  # not hot yet in our view: plain ranking
        for peer in ranking[: self.replicas]:
            if peer.node_id == self.node_id:
                continue
            try:
                got = await self.peers.ready(peer, spec)
                if got is None:
                    continue
                rs, peer_ns = got
                await rs.aput(peer_ns, tokens[:n], payloads, extra)
                self.counters["replicated_blocks"] += n // bt
            except KVStoreError as exc:
                log.info("replicating a hot prefix to %s failed: %s", peer.node_id, exc)

    # -- life -----------------------------------------------------------------------
    def status(self) -> dict:
        membership = self.view.snapshot()
        return {
            "node_id": self.node_id,
            "etcd_ok": self.view.etcd_ok,
            "registered": bool(self.registration and self.registration.registered.is_set()),
            "nodes": membership.nodes,
            "hot": membership.hot,
            "counters": dict(self.counters),
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self.registration is not None:
            await loop.run_in_executor(None, self.registration.close)
        await loop.run_in_executor(None, self.view.close)
        self.peers.close()
