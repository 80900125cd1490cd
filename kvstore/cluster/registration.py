"""NodeRegistration: a daemon's record in etcd, kept alive by a lease.

::

    grant lease (TTL)  ->  put /kvstore/NAME/nodes/ID = NodeInfo (with the lease)
    every TTL/3:  keepalive the lease; every update_interval: put a fresh NodeInfo
    lease lost (etcd was away longer than the TTL): grant a new one, put again
    close(): revoke the lease, so the node leaves at once (a crash: after TTL)

A second lease, with a longer TTL (``hot_ttl``), carries the node's hot-prefix
marks: they outlive the node by up to that long, so replicas keep serving a
hot prefix whose marking node died.

etcd unreachable: registration retries every ``retry_interval`` in the
background and the daemon serves as a single node meanwhile (logged once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kvstore.cluster.etcd import EtcdSession, EtcdUnavailable
from kvstore.cluster.records import NodeInfo, hot_prefix, nodes_prefix

log = logging.getLogger("kvstore.cluster")


class NodeRegistration:
    def __init__(self, session: EtcdSession, cluster: str, info: Callable[[], NodeInfo],
                 ttl: int = 5, hot_ttl: int = 120, update_interval: float = 2.0,
                 retry_interval: float = 1.0):
        if ttl < 2:
            raise ValueError("the lease TTL must be at least 2 s")
        self.session = session
        self.cluster = cluster
        self.info = info
        self.ttl = int(ttl)
        self.hot_ttl = int(hot_ttl)
        self.update_interval = update_interval
        self.retry_interval = retry_interval
        self.lease_id = 0
        self.hot_lease_id = 0
        self.registered = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="kvstore-registration", daemon=True)

    @property
    def key(self) -> str:
        return nodes_prefix(self.cluster) + self.info().node_id

    def start(self) -> NodeRegistration:
        self._thread.start()
        return self

    def _register(self) -> None:
        lease = self.session.grant(self.ttl)
        hot_lease = self.session.grant(self.hot_ttl)
        with self._lock:
            self.lease_id, self.hot_lease_id = lease, hot_lease
        self._put()
        self.registered.set()
        log.info("joined cluster %s as %s (lease %x, TTL %ds)", self.cluster,
                 self.info().node_id, lease, self.ttl)

    def _put(self) -> None:
        info = self.info()
        info.lease_id, info.lease_ttl, info.updated_at = self.lease_id, self.ttl, time.time()
        self.session.put(nodes_prefix(self.cluster) + info.node_id, info.to_json(), self.lease_id)

    def _run(self) -> None:
        last_put = 0.0
        while not self._stop.is_set():
            try:
                if not self.registered.is_set():
                    self._register()
                    last_put = time.monotonic()
                else:
                    alive = self.session.refresh(self.lease_id)
                    hot_alive = self.session.refresh(self.hot_lease_id)
                    if alive <= 0 or hot_alive <= 0:
                        log.warning("cluster lease expired (etcd was away); registering again")
                        self.registered.clear()
                        continue
                    if time.monotonic() - last_put >= self.update_interval:
                        self._put()
                        last_put = time.monotonic()
                if self._warned:
                    log.info("etcd reachable again; node registered")
                    self._warned = False
                wait = min(self.ttl / 3.0, self.update_interval)
            except EtcdUnavailable as exc:
                if not self._warned:
                    log.warning("cannot register in cluster %s (%s); serving as a single node "
                                "until etcd answers", self.cluster, exc)
                    self._warned = True
                wait = self.retry_interval
            self._stop.wait(wait)

    # -- hot-prefix marks ------------------------------------------------------
    def mark_hot(self, route_hex: str, value_json: str) -> bool:
        if not self.registered.is_set():
            return False
        try:
            self.session.put(hot_prefix(self.cluster) + route_hex, value_json, self.hot_lease_id)
            return True
        except EtcdUnavailable as exc:
            log.debug("marking %s hot failed: %s", route_hex, exc)
            return False

    def unmark_hot(self, route_hex: str) -> bool:
        """Remove a hot mark (it cooled down); False when etcd did not answer."""
        try:
            self.session.delete(hot_prefix(self.cluster) + route_hex)
            return True
        except EtcdUnavailable as exc:
            log.debug("unmarking %s failed: %s", route_hex, exc)
            return False

    def close(self, revoke: bool = True) -> None:
        """Stop refreshing; with ``revoke`` the node leaves now (its hot marks stay)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3.0)
        if revoke and self.registered.is_set():
            try:
                self.session.revoke(self.lease_id)
            except EtcdUnavailable:
                pass
