"""PeerPool: a node's connections to the other nodes of its cluster.

One ``RemoteStore`` per (peer node, tenant), on the peer's first advertised
tcp/ucx URL, strict (an unreachable peer raises, and the caller treats it as
a miss). Connections say hello as ``kvstore-peer/<node id>``: a daemon does
not fan a peer's request out again, so two nodes can never bounce a miss
between them. Namespaces are registered on a peer once per connection.

Every peer request has a short deadline (``timeout``, 0.3 s by default; a
payload extends it by its size at the connection's floor rate), and each
peer has a circuit breaker (``breaker``): a peer that timed out or refused
is skipped until the node's background probe gets an answer. ``forget``
drops the peers that left the membership and ends their requests in flight.
"""

from __future__ import annotations

import logging

from kvstore.cluster.breaker import Breaker
from kvstore.cluster.records import NodeInfo
from kvstore.namespace_spec import NamespaceSpec
from kvstore.transport.remote import RemoteStore

log = logging.getLogger("kvstore.cluster")
PEER_CLIENT_PREFIX = "kvstore-peer/"


def is_peer_client(client_name: str) -> bool:
    return client_name.startswith(PEER_CLIENT_PREFIX)


class PeerPool:
    def __init__(self, node_id: str, token: str | None = None, timeout: float = 0.3,
                 backoff: float = 0.25):
        self.node_id = node_id
        self.token = token
        self.timeout = timeout
        self.breaker = Breaker(base=backoff)
        self._stores: dict[tuple[str, str, str], RemoteStore] = {}
        self._registered: set[tuple[int, bytes]] = set()

    def store(self, peer: NodeInfo, tenant: str) -> RemoteStore | None:
        url = peer.url_for(("tcp", "ucx"))
        if url is None:
            return None
        key = (peer.node_id, url, tenant)
        rs = self._stores.get(key)
        if rs is None:
            rs = self._stores[key] = RemoteStore(
                url, token=self.token, tenant=tenant, strict=True, timeout=self.timeout,
                connect_timeout=self.timeout, retry_interval=self.timeout,
                client_name=PEER_CLIENT_PREFIX + self.node_id,
            )
        return rs

    async def ready(self, peer: NodeInfo, spec: NamespaceSpec) -> tuple[RemoteStore, bytes] | None:
        """The peer's client with ``spec`` registered on it, and the namespace id."""
        rs = self.store(peer, spec.tenant)
        if rs is None:
            return None
        mark = (id(rs), spec.fingerprint)
        ns = spec.fingerprint
        if mark not in self._registered:
            ns = await rs.aregister(spec)
            self._registered.add(mark)
        return rs, ns

    def forget(self, members) -> None:
        """Peers not in ``members`` left: end their requests now and drop their clients."""
        for key in [k for k in self._stores if k[0] not in members]:
            rs = self._stores.pop(key)
            self._registered = {m for m in self._registered if m[0] != id(rs)}
            rs.abort(f"peer {key[0]} left the cluster")
        self.breaker.forget(members)

    def close(self) -> None:
        for rs in self._stores.values():
            try:
                rs.close()
            except Exception:  # pragma: no cover - closing anyway
                pass
        self._stores.clear()
        self._registered.clear()
