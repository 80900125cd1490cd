"""Router: which nodes serve a prefix, best first (clients and nodes compute the same).

Routing key of a request: the chained key (kvstore.keys) of its first
``route_blocks`` blocks, rooted at the namespace id::

    route_key = block_keys(tokens[: route_blocks * B], B, extra, parent=h(ns))[-1]

so every block of a conversation (which shares those leading blocks) lands on
the same node, and a lookup is one hop. The nodes are ranked for the key by
rendezvous hashing (kvstore.cluster.rendezvous); ``candidates[0]`` owns it.

A hot prefix (``HotPrefix`` in etcd) is served by the first ``replicas``
nodes of the ranking. Requests that go past its shared part (``prefix_blocks``)
are spread over those replicas by the key of their first block past it, so
each conversation sticks to one replica; requests that end inside it (the
shared prompt itself) rotate over the replicas::

    ranking for route_key:     [n3, n1, n4, n2]        replicas = 2
    hot, past the prefix:      rank(sub_key, [n3, n1]) + [n4, n2]
    hot, inside the prefix:    rotate([n3, n1]) + [n4, n2]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import xxhash

from kvstore.cluster.membership import Membership
from kvstore.cluster.records import HotPrefix, NodeInfo
from kvstore.cluster.rendezvous import rank
from kvstore.keys import KEY_SEED, block_keys
from kvstore.tokens import as_tokens, full_blocks


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    route_key: bytes | None  # None: shorter than the routing blocks (nothing to cache)
    candidates: tuple[NodeInfo, ...]  # best first: the owner (or chosen replica), then others
    replicas: int  # candidates[:replicas] hold the prefix (1, or a hot prefix's count)
    hot: HotPrefix | None = None

    @property
    def route_hex(self) -> str:
        return self.route_key.hex() if self.route_key else ""

    def owners(self) -> tuple[NodeInfo, ...]:
        return self.candidates[: self.replicas]


def namespace_root(ns: bytes) -> bytes:
    return xxhash.xxh3_128(ns, seed=KEY_SEED).digest()


class Router:
    def __init__(self, route_blocks: int = 1):
        if route_blocks < 1:
            raise ValueError("route_blocks must be at least 1")
        self.route_blocks = route_blocks
        self._rotation = itertools.count()

    def route_key(self, ns: bytes, tokens, block_tokens: int, extra: bytes = b"") -> bytes | None:
        toks = as_tokens(tokens)
        want = self.route_blocks * block_tokens
        if len(toks) < want:
            return None
        return block_keys(toks[:want], block_tokens, extra, parent=namespace_root(ns))[-1]

    def route(self, membership: Membership, ns: bytes, tokens, block_tokens: int,
              extra: bytes = b"") -> Route:
        toks = as_tokens(tokens)
        key = self.route_key(ns, toks, block_tokens, extra)
        if key is None or not membership.nodes:
            return Route(key, (), 1)
        ranking = [membership.nodes[n] for n in rank(key, membership.nodes)]
        hot = membership.hot.get(key.hex())
        if hot is None or hot.replicas <= 1 or len(ranking) == 1:
            return Route(key, tuple(ranking), 1)
        r = min(hot.replicas, len(ranking))
        replicas, rest = ranking[:r], ranking[r:]
        past = hot.prefix_blocks
        if full_blocks(toks, block_tokens) > past:
            sub = block_keys(toks[: (past + 1) * block_tokens], block_tokens, extra,
                             parent=namespace_root(ns))[-1]
            by_id = {n.node_id: n for n in replicas}
            replicas = [by_id[n] for n in rank(sub, by_id)]
        else:
            turn = next(self._rotation) % r
            replicas = replicas[turn:] + replicas[:turn]
        return Route(key, tuple(replicas + rest), r, hot)
