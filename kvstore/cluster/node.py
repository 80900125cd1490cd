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

- failures: each peer request has a short deadline (``peer_timeout``); the
  fan-out answers with what the peers that answered within it have; a peer
  that timed out is skipped (``PeerPool.breaker``) until the background
  probe hears from it again; a peer that leaves the membership has its
  requests ended at once. A forwarded write whose owner cannot be reached
  goes to the next reachable node of the ranking (where readers look next).
- membership changes (``kvstore.cluster.rebalance``): on a join, the
  prefixes the newcomer owns are pushed to it in the background, paced at
  ``rebalance_rate``; on a loss, hot prefixes are pushed to the replica
  that takes the lost one's place.

A peer's own requests (hello as ``kvstore-peer/...``) are answered from the
local store only: a miss is never bounced between nodes. Every failure to
reach a peer or etcd degrades to a miss, logged, never an error to the client.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kvstore.cluster.hot_prefixes import HotTracker
from kvstore.cluster.membership import Membership, MembershipView
from kvstore.cluster.peers import PeerPool, is_peer_client
from kvstore.cluster.rebalance import Pacer, PrefixJournal
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
                 route_blocks: int = 1, token: str | None = None, peer_timeout: float = 0.3,
                 rebalance_rate: float = 64e6, journal_limit: int = 50_000,
                 probe_interval: float = 0.1, hot_cool: float = 600.0):
        self.node_id = node_id
        self.store = store
        self.view = view
        self.registration = registration
        self.replicas = replicas
        self.peer_fanout = peer_fanout
        self.peer_timeout = peer_timeout
        self.router = Router(route_blocks)
        self.peers = PeerPool(node_id, token, timeout=peer_timeout)
        self.hot = HotTracker(hot_threshold, hot_window)
        self.journal = PrefixJournal(journal_limit)
        self.pacer = Pacer(rebalance_rate)
        self.probe_interval = probe_interval
        self.hot_cool = hot_cool  # a mark made here without a hit here for this long is removed
        self._marked: dict[str, float] = {}  # route hex -> last hit here (marks made here)
        self._cooled_at = time.monotonic()
        self.counters = {"peer_lookups": 0, "peer_fetched_blocks": 0, "forwarded_puts": 0,
                         "forward_errors": 0, "peer_errors": 0, "peer_timeouts": 0,
                         "hot_marked": 0, "replicated_blocks": 0, "rebalanced_blocks": 0,
                         "repaired_blocks": 0, "forwarded_hints": 0}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._members = set(view.snapshot().nodes)
        self._moving: asyncio.Task | None = None
        self._move_again = False
        self._prober: asyncio.Task | None = None
        chained = view.on_change

        def on_change(membership: Membership) -> None:
            if chained is not None:
                chained(membership)
            self._membership_changed(membership)

        view.on_change = on_change
        try:
            self._bind(asyncio.get_running_loop())
        except RuntimeError:  # made outside the loop: bound on the first hook call
            pass

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self._prober = loop.create_task(self._probe_loop())

    # -- routing --------------------------------------------------------------
    def _route(self, spec: NamespaceSpec, ns: bytes, tokens, extra: bytes) -> Route:
        return self.router.route(self.view.snapshot(), ns, tokens, spec.block_tokens, extra)

    def _others(self, route: Route) -> list[NodeInfo]:
        """The nodes to ask for a prefix this node lacks, most likely holder first."""
        want = max(route.replicas, 1) + self.peer_fanout - 1
        return [n for n in route.candidates if n.node_id != self.node_id][:want]

    def _owns(self, route: Route) -> bool:
        return any(n.node_id == self.node_id for n in route.owners())

    def _peer_failed(self, peer: NodeInfo, what: str, exc: BaseException) -> None:
        self.counters["peer_errors"] += 1
        backoff = self.peers.breaker.failed(peer.node_id)
        log.info("%s at %s failed (%s); skipping it for %.2fs", what, peer.node_id, exc, backoff)

    async def _peer_lookup(self, peer: NodeInfo, spec, tokens, extra) -> int:
        try:
            got = await self.peers.ready(peer, spec)
            if got is None:
                return 0
            rs, peer_ns = got
            return int(await rs.alookup(peer_ns, tokens, extra))
        except KVStoreError as exc:
            self._peer_failed(peer, "lookup", exc)
            return 0

    async def _ask(self, others: list[NodeInfo], spec, tokens, extra) -> list[int]:
        """How much each of ``others`` holds: 0 for a skipped peer or one silent past the deadline."""
        tasks = {}
        for i, peer in enumerate(others):
            if self.peers.breaker.allows(peer.node_id):
                tasks[i] = asyncio.ensure_future(self._peer_lookup(peer, spec, tokens, extra))
        counts = [0] * len(others)
        if not tasks:
            return counts
        self.counters["peer_lookups"] += 1
        done, pending = await asyncio.wait(tasks.values(), timeout=self.peer_timeout * 1.5)
        for i, task in tasks.items():
            if task in done:
                counts[i] = task.result()
            else:
                task.cancel()
                self.counters["peer_timeouts"] += 1
                self.peers.breaker.failed(others[i].node_id)
        return counts

    # -- dispatcher hooks -------------------------------------------------------
    async def lookup(self, session, spec, ns, tokens, extra, local: int) -> int:
        """Leading tokens cached here or at the prefix's owners (``local``: here)."""
        whole = full_blocks(tokens, spec.block_tokens) * spec.block_tokens
        self._bind(asyncio.get_running_loop())
        if is_peer_client(session.client) or local >= whole:
            return local
        route = self._route(spec, ns, tokens, extra)
        others = self._others(route)
        if not others:
            return local
        return max([local, *await self._ask(others, spec, tokens, extra)])

    async def fill(self, session, spec, ns, tokens, extra) -> None:
        """Before a read: fetch from a peer the blocks of ``tokens`` this node lacks."""
        self._bind(asyncio.get_running_loop())
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
        counts = await self._ask(others, spec, tokens, extra)
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
            self._peer_failed(others[best], "fetch", exc)

    async def after_put(self, session, spec, ns, tokens, extra) -> None:
        """After a write here: forward the prefix to its owner, or around it when it is silent.

        The owner when it answers. Else the first other reachable node of the
        ranking too: readers (who try the same order) find it there or here,
        and the owner's own fan-out reaches one of the two even when it cannot
        reach this node (a partial partition).
        """
        self._bind(asyncio.get_running_loop())
        self.journal.add(spec, ns, tokens, extra)
        if is_peer_client(session.client):
            return
        route = self._route(spec, ns, tokens, extra)
        if not route.candidates or self._owns(route):
            return
        loop = asyncio.get_running_loop()
        n, payloads = await loop.run_in_executor(None, self.store.get, ns, tokens, extra)
        if n == 0:
            return
        for node in route.candidates:
            if node.node_id == self.node_id or not self.peers.breaker.allows(node.node_id):
                continue
            try:
                got = await self.peers.ready(node, spec)
                if got is None:
                    continue
                rs, peer_ns = got
                await rs.aput(peer_ns, tokens[:n], payloads, extra)
                self.counters["forwarded_puts"] += 1
                return
            except KVStoreError as exc:
                self.counters["forward_errors"] += 1
                self._peer_failed(node, "forwarding a put", exc)
        log.info("no peer took a put of a prefix owned by %s; kept here only",
                 route.candidates[0].node_id)

    async def after_hint(self, session, spec, ns, tokens, extra, hint, local: int) -> int:
        """After a hint applied here (to ``local`` tokens): pass it on to the prefix's owners
        (a hot prefix's replicas too) that are other nodes; the most tokens it applied to.

        Their policies are the ones that decide what the cluster keeps of the
        prefix; this node's copy is a cache. A peer that cannot be reached drops it.
        """
        if is_peer_client(session.client):
            return local
        route = self._route(spec, ns, tokens, extra)
        others = [n for n in route.owners()
                  if n.node_id != self.node_id and self.peers.breaker.allows(n.node_id)]
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
            self._peer_failed(peer, "forwarding a hint", exc)
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
            if route_key.hex() in self._marked:
                self._marked[route_key.hex()] = time.monotonic()
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
        self._marked[cand.route_hex] = time.monotonic()
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

    # -- failure detection and membership changes -----------------------------------
    async def _probe_loop(self) -> None:
        """Ask the peers whose breaker is open and due whether they answer again."""
        while True:
            await asyncio.sleep(self.probe_interval)
            nodes = self.view.snapshot().nodes
            for node_id in self.peers.breaker.due():
                peer = nodes.get(node_id)
                rs = self.peers.store(peer, "") if peer is not None else None
                if rs is None:
                    self.peers.breaker.succeeded(node_id)
                    continue
                try:
                    await rs.astats()
                    ok = True
                except KVStoreError:
                    ok = False
                self.peers.breaker.probed(node_id, ok)
                if ok:
                    log.info("peer %s answers again", node_id)
            if time.monotonic() - self._cooled_at >= min(10.0, self.hot_cool / 4):
                self._cooled_at = time.monotonic()
                await self._cool()

    async def _cool(self) -> None:
        """Remove the hot marks made here that had no hit here for ``hot_cool`` seconds."""
        now = time.monotonic()
        cold = [r for r, last in self._marked.items() if now - last >= self.hot_cool]
        loop = asyncio.get_running_loop()
        for route_hex in cold:
            if self.registration is not None and not await loop.run_in_executor(
                    None, self.registration.unmark_hot, route_hex):
                continue
            self._marked.pop(route_hex, None)
            self.hot.forget(route_hex)
            self.counters["hot_cooled"] = self.counters.get("hot_cooled", 0) + 1
            log.info("prefix %s.. cooled down: hot mark removed", route_hex[:12])

    def _membership_changed(self, membership: Membership) -> None:
        """From the membership thread: forget departed peers, move data to newcomers."""
        members = set(membership.nodes)
        joined, left = members - self._members, self._members - members
        self._members = members
        if not (joined or left):
            return
        loop = self._loop
        if loop is None:
            if left:
                self.peers.forget(members)
            return
        loop.call_soon_threadsafe(self._start_moving, members, bool(joined), bool(left))

    def _start_moving(self, members: set, joined: bool, left: bool) -> None:
        if left:
            self.peers.forget(members)
            self._spawn(self._repair_hot())
        if joined:
            if self._moving is not None and not self._moving.done():
                self._move_again = True
                return
            self._moving = asyncio.get_running_loop().create_task(self._rebalance())
            self._tasks.add(self._moving)
            self._moving.add_done_callback(self._tasks.discard)

    async def _push(self, peer: NodeInfo, entry, tokens, counter: str) -> None:
        """Push ``tokens`` of a journal entry to ``peer`` unless it holds them already."""
        got = await self.peers.ready(peer, entry.spec)
        if got is None:
            return
        rs, peer_ns = got
        there = int(await rs.alookup(peer_ns, tokens, entry.extra))
        loop = asyncio.get_running_loop()
        n, payloads = await loop.run_in_executor(None, self.store.get, entry.ns, tokens,
                                                 entry.extra)
        if n <= there or not payloads:
            return
        await self.pacer.spend(sum(memoryview(p).nbytes for p in payloads))
        await rs.aput(peer_ns, tokens[:n], payloads, entry.extra)
        self.counters[counter] += (n - there) // entry.spec.block_tokens

    async def _rebalance(self) -> None:
        """Push the journal's prefixes whose owner is now another node to that owner."""
        while True:
            self._move_again = False
            moved = 0
            for entry in reversed(self.journal.entries()):  # newest first
                route = self._route(entry.spec, entry.ns, entry.tokens, entry.extra)
                if not route.candidates or self._owns(route):
                    continue
                owner = route.candidates[0]
                if not self.peers.breaker.allows(owner.node_id):
                    continue
                try:
                    await self._push(owner, entry, entry.tokens, "rebalanced_blocks")
                    moved += 1
                except KVStoreError as exc:
                    self._peer_failed(owner, "moving a prefix", exc)
            log.info("rebalance after a join: %d prefixes checked or moved", moved)
            if not self._move_again:
                return

    async def _repair_hot(self) -> None:
        """After a loss: push hot prefixes held here to the replicas that now lack them."""
        done: set[str] = set()
        for entry in reversed(self.journal.entries()):
            route = self._route(entry.spec, entry.ns, entry.tokens, entry.extra)
            if route.hot is None or route.route_hex in done or not self._owns(route):
                continue
            done.add(route.route_hex)
            prefix = entry.tokens[: route.hot.prefix_blocks * entry.spec.block_tokens]
            for peer in route.owners():
                if peer.node_id == self.node_id or not self.peers.breaker.allows(peer.node_id):
                    continue
                try:
                    await self._push(peer, entry, prefix, "repaired_blocks")
                except KVStoreError as exc:
                    self._peer_failed(peer, "repairing a hot prefix", exc)

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
            "open_peers": self.peers.breaker.open_peers(),
            "journal": len(self.journal),
        }

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self.registration is not None:
            await loop.run_in_executor(None, self.registration.close)
        await loop.run_in_executor(None, self.view.close)
        self.peers.close()
