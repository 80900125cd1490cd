"""Membership: the live nodes and hot prefixes of a cluster, as last read from etcd.

A ``MembershipView`` keeps a snapshot (``nodes``, ``hot``) that a background
thread refreshes from etcd: at once when etcd's watch signals a change
under ``/kvstore/NAME/``, and every ``resync_interval`` seconds anyway. When
etcd cannot be reached the snapshot is kept as it was (the cluster goes on
with its last known membership) and ``etcd_ok`` turns False; it is refreshed
again once etcd answers.

Readers never block on etcd: ``snapshot()`` returns the current immutable
``Membership``; ``version`` grows with each change (routers cache on it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.cluster.etcd import EtcdSession, EtcdUnavailable
from kvstore.cluster.records import PREFIX, HotPrefix, NodeInfo, hot_prefix, nodes_prefix
from kvstore.errors import InvalidArgument

log = logging.getLogger("kvstore.cluster")


@dataclass(frozen=True)
class Membership:
    """One consistent reading of the cluster."""

    nodes: dict[str, NodeInfo] = field(default_factory=dict)  # node_id -> info
    hot: dict[str, HotPrefix] = field(default_factory=dict)  # route_hex -> hot prefix
    version: int = 0
    read_at: float = 0.0  # monotonic time of the last successful read (0: never)


def parse_membership(cluster: str, raw: dict[str, bytes], version: int) -> Membership:
    """Decode the keys under ``/kvstore/NAME/``; malformed records are skipped, logged."""
    nodes, hot = {}, {}
    np_, hp = nodes_prefix(cluster), hot_prefix(cluster)
    for key, value in raw.items():
        try:
            if key.startswith(np_):
                info = NodeInfo.from_json(value)
                nodes[info.node_id] = info
            elif key.startswith(hp):
                entry = HotPrefix.from_json(value)
                hot[entry.route_hex] = entry
        except (ValueError, TypeError, InvalidArgument) as exc:
            log.warning("skipping malformed cluster record %s: %s", key, exc)
    return Membership(nodes, hot, version, time.monotonic())


class MembershipView:
    def __init__(self, session: EtcdSession, cluster: str, resync_interval: float = 1.0,
                 on_change: Callable[[Membership], None] | None = None):
        self.session = session
        self.cluster = cluster
        self.resync_interval = resync_interval
        self.on_change = on_change
        self._snapshot = Membership()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.etcd_ok = False
        self._refreshed = threading.Event()
        self._watch = None
        self._thread = threading.Thread(target=self._run, name="kvstore-membership", daemon=True)

    def start(self, wait: float = 0.0) -> MembershipView:
        """Start watching; with ``wait`` > 0, block up to that long for a first reading."""
        self._watch = self.session.watch_prefix(f"{PREFIX}/{self.cluster}/", self._wake.set)
        self._thread.start()
        if wait > 0:
            self._refreshed.wait(wait)
        return self

    def snapshot(self) -> Membership:
        return self._snapshot

    def refresh(self) -> bool:
        """Read the cluster now; False (and the old snapshot kept) when etcd is unreachable."""
        try:
            raw = self.session.get_prefix(f"{PREFIX}/{self.cluster}/")
        except EtcdUnavailable as exc:
            if self.etcd_ok or not self._refreshed.is_set():
                log.warning("etcd unreachable; serving with the last known membership (%s)", exc)
            self.etcd_ok = False
            self._refreshed.set()
            return False
        if not self.etcd_ok:
            log.info("etcd reachable: %s", self.session.endpoint)
        self.etcd_ok = True
        with self._lock:
            old = self._snapshot
            new = parse_membership(self.cluster, raw, old.version)
            changed = new.nodes != old.nodes or new.hot != old.hot
            if changed:
                new = Membership(new.nodes, new.hot, old.version + 1, new.read_at)
                self._snapshot = new
            else:
                self._snapshot = Membership(old.nodes, old.hot, old.version, new.read_at)
        self._refreshed.set()
        if changed:
            joined = sorted(set(new.nodes) - set(old.nodes))
            left = sorted(set(old.nodes) - set(new.nodes))
            if joined or left:
                log.info("cluster %s: %d nodes (joined %s, left %s)", self.cluster,
                         len(new.nodes), joined or "-", left or "-")
            if self.on_change is not None:
                try:
                    self.on_change(new)
                except Exception:  # pragma: no cover - a listener's bug
                    log.exception("membership listener failed")
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.refresh()
            self._wake.wait(self.resync_interval)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=3.0)
