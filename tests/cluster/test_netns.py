"""The cluster on separate hosts (network namespaces, tests/cluster/netns.py): cuts without resets.

etcd, three daemons and the client each on their own host (10.77.0.0/24 on
a bridge the test makes and removes). A cut node (its link down) costs
misses within the deadline, never stalls; a write across a partial
partition (n1 cannot reach n3: blackhole routes, or a bogus permanent
neighbour entry) is readable through ``etcd://`` at once.
"""

from __future__ import annotations

import time

import pytest

from kvstore.demo.etcd_process import etcd_binary
from tests.cluster import netns

pytestmark = pytest.mark.integration


@pytest.fixture
def net():
    if etcd_binary() is None:
        pytest.skip("etcd not installed (scripts/install_system.sh)")
    why = netns.available()
    if why is not None:
        pytest.skip(f"network namespaces cannot be made here: {why}")
    with netns.NetCluster() as cluster:
        cluster.ask("wait 3")
        yield cluster


def node_url(net, name: str) -> str:
    return f"tcp://{net.hosts.addr[name]}:7801"


@pytest.mark.parametrize("cut_seconds", [
    4, pytest.param(20, marks=pytest.mark.slow, id="long"),
])
def test_a_cut_node_costs_misses_never_stalls(net, cut_seconds):
    assert net.ask("fill 60 1")["acked"] == 60
    before = net.ask("measure 2")
    assert before["hit_rate"] == 1.0
    victim = net.node_id("n3")
    net.hosts.link_down("n3")
    fresh = net.ask(f"fresh 5 77 {victim}")  # while n3 is still a member
    miss = net.ask(f"miss {node_url(net, 'n1')} 5")
    during = net.ask(f"measure {cut_seconds} {victim}")
    net.hosts.heal()
    for phase in (fresh, during):
        assert phase.get("put_max", phase.get("max")) <= 1.5, phase
    assert fresh["acked"] >= 1 and fresh["readable"] == fresh["acked"], fresh
    assert miss["max"] <= 1.0, miss
    assert during["healthy_p99"] <= max(2 * before["p99"], 0.05), (before, during)
    assert during["hit_rate"] > 0.5
    deadline = time.monotonic() + 30  # n3 rejoins with its blocks
    while time.monotonic() < deadline:
        after = net.ask("measure 1")
        if after["hit_rate"] >= 0.99:
            break
    assert after["hit_rate"] >= 0.99 and after["max"] <= 1.5, after


@pytest.mark.parametrize("cut", ["blackhole", "bogus_neighbour"])
def test_a_write_across_a_partial_partition_is_readable(net, cut):
    assert net.ask("fill 30 2")["acked"] == 30
    victim = net.node_id("n3")
    getattr(net.hosts, cut)("n1", "n3")
    getattr(net.hosts, cut)("n3", "n1")
    fresh = net.ask(f"fresh 5 78 {victim} {node_url(net, 'n1')}")  # through n1, owned by n3
    assert fresh["acked"] == fresh["tried"] == 5, fresh
    assert fresh["readable"] == 5, fresh
    assert fresh["put_max"] <= 1.5, fresh
    miss = net.ask(f"miss {node_url(net, 'n1')} 5")  # n1's misses ask the unreachable n3
    assert miss["max"] <= 1.0, miss
    during = net.ask("measure 2")
    assert during["max"] <= 1.5 and during["hit_rate"] == 1.0, during
