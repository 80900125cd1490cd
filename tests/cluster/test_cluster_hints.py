"""Hints in a cluster (a real etcd, three real daemons): they reach the prefix's owner.

Blocks put through a routing client (``etcd://``) live on the owner only, so
a hint that reports the whole prefix applied was applied there. Through a
node that does not own the prefix (an engine talking to its local daemon),
the node forwards the hint to the owner (its ``forwarded_hints`` counter).
"""

from __future__ import annotations

import numpy as np

from kvstore.admin.client import AdminClient
from kvstore.client import KVClient
from kvstore.cluster.etcd import wait_until
from tests.cluster.conftest import LAYOUT, kv_for, needs_etcd, wait_members

pytestmark = needs_etcd
B = LAYOUT.block_tokens


def prompt(i: int, blocks: int = 4) -> np.ndarray:
    return np.arange(i * 100_000, i * 100_000 + blocks * B, dtype=np.uint32)


def counters(node_info) -> dict:
    with AdminClient(node_info.admin) as admin:
        return admin.call("GetCluster").get("counters", {})


def members_seen_by(node_info) -> int:
    with AdminClient(node_info.admin) as admin:
        return len(admin.call("GetCluster").get("nodes", []))


def test_hint_reaches_the_owner_from_a_routing_client_and_through_any_node(make_cluster):
    cluster = make_cluster(3, name="hints")
    with KVClient.connect(cluster.url) as router:
        assert wait_members(router.backend, 3)
        infos = router.backend.nodes()
        for info in infos.values():
            assert wait_until(lambda info=info: members_seen_by(info) == 3, 20)
        ns = router.namespace(LAYOUT)
        for i in range(3):
            toks = prompt(i)
            assert ns.put(toks, kv_for(len(toks), i)) == len(toks)
            # the routing client sends the hint to the owner, the only node with the blocks
            assert ns.hint(toks, session_end=True) == len(toks)
            assert ns.hint(toks, keep_until=60, priority=2) == len(toks)
            assert ns.lookup(toks) == len(toks)  # a hint never changes what is cached
        assert ns.hint(prompt(77), session_end=True) == 0  # nothing cached: a no-op

        toks = prompt(50)
        assert ns.put(toks, kv_for(len(toks), 50)) == len(toks)
        owner = router.backend.route(ns.id, toks).candidates[0].node_id
        other = next(n for n in cluster.nodes if n.node_id != owner)
        before = counters(infos[other.node_id]).get("forwarded_hints", 0)
        with KVClient.connect(other.url, strict=True) as local:
            # the node holds nothing of the prefix: what it reports came from the owner
            assert local.namespace(LAYOUT).hint(toks, priority=1) == len(toks)
        assert counters(infos[other.node_id])["forwarded_hints"] == before + 1
        assert counters(infos[owner]).get("forwarded_hints", 0) == 0  # the owner keeps it


def test_hint_follows_a_put_past_a_lost_owner_and_is_dropped_when_no_node_answers(
        make_cluster):
    cluster = make_cluster(2, name="gone")
    with KVClient.connect(cluster.url, suspect_seconds=30) as c:
        assert wait_members(c.backend, 2)
        ns = c.namespace(LAYOUT)
        toks = prompt(5)
        owner = c.backend.route(ns.id, toks).candidates[0].node_id
        cluster.by_id(owner).kill()
        assert ns.put(toks, kv_for(len(toks), 5)) == len(toks)  # stored on the next node
        assert ns.hint(toks, session_end=True) == len(toks)  # and the hint follows it there
        next(n for n in cluster.nodes if n.node_id != owner).kill()
        assert ns.hint(toks, session_end=True) == 0  # no node answers: dropped, not an error
