"""The daemon service that joins ``kvstore serve --etcd URL`` to its cluster.

Importing this module registers ``cluster_service`` in
``kvstore.daemon.SERVICE_FACTORIES``; it returns None unless ``etcd`` is set.

Life::

    start()              watch the membership (etcd down: warn, keep retrying)
    state "serving"      register the node (its listeners are known now) and
                         hook the dispatcher (ClusterNode)
    state "draining"     revoke the lease: the node leaves at once, clients re-route
    stop()               stop the threads, close the peer connections

The node id is ``--node-id``, else the id kept in ``<ssd_dir>/node-id``
(created on the first start), so a node that restarts on its SSD tier
rejoins as itself and gets back the keys it owned, with their blocks.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

from kvstore.cluster.etcd import EtcdSession
from kvstore.cluster.membership import MembershipView
from kvstore.cluster.node import ClusterNode
from kvstore.cluster.records import NodeInfo
from kvstore.cluster.registration import NodeRegistration

log = logging.getLogger("kvstore.cluster")
NODE_ID_FILE = "node-id"


def resolve_node_id(config) -> str:
    if config.node_id:
        return config.node_id
    if config.ssd_enabled:
        path = Path(config.ssd_dir) / NODE_ID_FILE
        try:
            existing = path.read_text().strip()
            if existing:
                return existing
        except FileNotFoundError:
            pass
        node_id = f"node-{uuid.uuid4().hex[:12]}"
        os.makedirs(config.ssd_dir, mode=0o700, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        os.replace(tmp, path)
        return node_id
    return f"node-{uuid.uuid4().hex[:12]}"  # no SSD: nothing survives a restart anyway


def peer_token(config) -> str | None:
    """The token this node presents to its peers.

    ``KVSTORE_AUTH_TOKEN`` when set, else the first any-tenant token (a line
    without ``TENANT:``) of ``--auth-token-file``: peers act for every tenant,
    so a cluster with auth shares one such token between its nodes.
    """
    if os.environ.get("KVSTORE_AUTH_TOKEN"):
        return os.environ["KVSTORE_AUTH_TOKEN"]
    if config.auth_token_file:
        with open(config.auth_token_file) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and ":" not in line:
                    return line
        log.warning("no any-tenant token in %s: peers of this node cannot authenticate",
                    config.auth_token_file)
    return None


class ClusterService:
    kind = "cluster"

    def __init__(self, daemon):
        self.daemon = daemon
        config = daemon.config
        self.config = config
        self.node_id = resolve_node_id(config)
        self.session = EtcdSession(config.etcd)
        self.view = MembershipView(self.session, config.cluster)
        self.registration: NodeRegistration | None = None
        self.node: ClusterNode | None = None
        self.started_at = time.time()

    async def start(self) -> None:
        self.view.start()
        log.info("cluster %s at %s: node %s", self.config.cluster, self.session.endpoint,
                 self.node_id)

    def _advertised(self) -> list[str]:
        if self.config.advertise:
            return list(self.config.advertise)
        urls = list(self.daemon.server.urls) if self.daemon.server else []
        for url in urls:
            if "://0.0.0.0:" in url or "://[::]:" in url:
                log.warning("listener %s is a wildcard address: set --advertise so peers "
                            "can reach this node", url)
        return urls

    def _admin_address(self) -> str:
        for service in self.daemon.services:
            if getattr(service, "kind", "") == "admin":
                return getattr(service, "address", "")
        return ""

    def node_info(self) -> NodeInfo:
        capacity = used = blocks = 0
        store = self.daemon.store
        if store is not None:
            try:
                for tier in store.stats().tiers:
                    capacity += tier.capacity_bytes
                    used += tier.used_bytes
                    blocks += tier.blocks
            except Exception:  # the store may be closing
                pass
        server = self.daemon.server
        requests = server.dispatcher.requests if server is not None else 0
        return NodeInfo(self.node_id, self._advertised(), self._admin_address(), capacity, used,
                        blocks, requests, self.started_at)

    def state_changed(self, state: str) -> None:
        if state == "serving" and self.node is None:
            config = self.config
            self.registration = NodeRegistration(
                self.session, config.cluster, self.node_info, ttl=config.cluster_ttl,
                update_interval=min(2.0, config.cluster_ttl / 2),
            ).start()
            self.node = ClusterNode(
                self.node_id, self.daemon.store, self.view, self.registration,
                replicas=config.replicas, hot_threshold=config.hot_threshold,
                peer_fanout=config.peer_fanout, token=peer_token(config),
                peer_timeout=config.peer_timeout, rebalance_rate=config.rebalance_rate,
            )
            self.daemon.server.dispatcher.ops.cluster = self.node
        elif state == "draining" and self.registration is not None:
            self.registration.close(revoke=True)  # leave now; requests still drain

    async def stop(self) -> None:
        if self.daemon.server is not None:
            self.daemon.server.dispatcher.ops.cluster = None
        if self.node is not None:
            await self.node.close()
        else:
            self.view.close()


def cluster_service(daemon):
    if not daemon.config.etcd:
        return None
    return ClusterService(daemon)

