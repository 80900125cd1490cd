"""Router: the routing key, the plain ranking, and hot prefixes spread over replicas."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kvstore.cluster.membership import Membership, parse_membership
from kvstore.cluster.records import EtcdURL, HotPrefix, NodeInfo
from kvstore.cluster.routing import Router
from kvstore.errors import InvalidArgument

B = 16
NS = b"\x01" * 16


def members(n: int = 4, hot: dict | None = None) -> Membership:
    nodes = {f"n{i}": NodeInfo(f"n{i}", [f"tcp://127.0.0.1:{7000 + i}"]) for i in range(n)}
    return Membership(nodes, hot or {}, 1)


def toks(first: int, n_blocks: int) -> np.ndarray:
    return np.arange(first, first + n_blocks * B, dtype=np.uint32)


def test_route_key_depends_on_the_first_block_namespace_and_extra_only():
    r = Router()
    a = toks(0, 4)
    b = a.copy()
    b[B:] += 1000  # same first block, different rest
    assert r.route_key(NS, a, B) == r.route_key(NS, b, B)
    c = a.copy()
    c[3] += 1
    assert r.route_key(NS, a, B) != r.route_key(NS, c, B)
    assert r.route_key(NS, a, B) != r.route_key(b"\x02" * 16, a, B)
    assert r.route_key(NS, a, B) != r.route_key(NS, a, B, extra=b"lora-1")
    assert r.route_key(NS, a[: B - 1], B) is None  # shorter than a block: not routable


def test_plain_route_is_the_ranking_and_a_conversation_stays_on_one_node():
    r, m = Router(), members()
    conv = toks(0, 8)
    first = r.route(m, NS, conv[: 2 * B], B)
    assert first.replicas == 1 and len(first.candidates) == 4
    for turn in range(3, 9):
        assert r.route(m, NS, conv[: turn * B], B).candidates == first.candidates


def test_empty_membership_routes_nowhere():
    route = Router().route(Membership(), NS, toks(0, 2), B)
    assert route.candidates == () and route.owners() == ()


def test_hot_prefix_spreads_conversations_over_replicas_and_each_sticks():
    r = Router()
    system = toks(0, 4)  # a shared 4-block system prompt
    key = r.route_key(NS, system, B)
    plain = r.route(members(), NS, system, B).candidates
    hot = {key.hex(): HotPrefix(key.hex(), replicas=3, prefix_blocks=4)}
    m = members(hot=hot)
    chosen = Counter()
    for conv in range(300):
        turn1 = np.concatenate([system, toks(10_000 + conv * 1000, 1)])
        turn2 = np.concatenate([turn1, toks(50_000 + conv * 1000, 2)])
        a, b = r.route(m, NS, turn1, B), r.route(m, NS, turn2, B)
        assert a.candidates[0] == b.candidates[0]  # the conversation sticks to its replica
        assert a.replicas == 3
        assert {n.node_id for n in a.owners()} == {n.node_id for n in plain[:3]}
        assert a.candidates[3:] == plain[3:]
        chosen[a.candidates[0].node_id] += 1
    assert len(chosen) == 3 and min(chosen.values()) >= 60  # spread over the 3 replicas


def test_reads_of_the_hot_prefix_itself_rotate_over_replicas():
    r = Router()
    system = toks(0, 4)
    key = r.route_key(NS, system, B)
    m = members(hot={key.hex(): HotPrefix(key.hex(), replicas=2, prefix_blocks=4)})
    heads = Counter(r.route(m, NS, system, B).candidates[0].node_id for _ in range(10))
    assert len(heads) == 2 and set(heads.values()) == {5}


def test_membership_parsing_skips_malformed_records():
    raw = {
        "/kvstore/c/nodes/a": NodeInfo("a", ["tcp://h:1"]).to_json().encode(),
        "/kvstore/c/nodes/b": b"{not json",
        "/kvstore/c/hot/ff": HotPrefix("ff", 2, 3).to_json().encode(),
        "/kvstore/c/hot/ee": b'{"route_hex": "ee", "replicas": 0, "prefix_blocks": 1}',
    }
    m = parse_membership("c", raw, 0)
    assert list(m.nodes) == ["a"] and list(m.hot) == ["ff"]


@pytest.mark.parametrize("url", ["etcd://h", "etcd://h:x/c", "tcp://h:1/c", "etcd://h:1/bad name"])
def test_bad_cluster_urls(url):
    with pytest.raises(InvalidArgument):
        EtcdURL.parse(url)


def test_cluster_url():
    u = EtcdURL.parse("etcd://127.0.0.1:2379/prod")
    assert (u.host, u.port, u.cluster, u.endpoint) == ("127.0.0.1", 2379, "prod",
                                                       "http://127.0.0.1:2379")
    assert EtcdURL.parse("etcd://127.0.0.1:2379").cluster == "default"
