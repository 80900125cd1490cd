"""A real etcd and three real daemons: routing, any-node access, node loss, rejoin, hot prefixes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kvstore.admin.client import AdminClient
from kvstore.client import KVClient
from kvstore.client.codec import BlockCodec
from kvstore.cluster.etcd import wait_until
from kvstore.demo.daemon_process import DaemonProc, free_port
from kvstore.demo.etcd_process import EtcdProc
from kvstore.namespace_spec import NamespaceSpec
from tests.cluster.conftest import LAYOUT, TTL, kv_for, needs_etcd, wait_members

pytestmark = [needs_etcd, pytest.mark.integration]
B = LAYOUT.block_tokens


def prompt(i: int, blocks: int = 4) -> np.ndarray:
    return np.arange(i * 100_000, i * 100_000 + blocks * B, dtype=np.uint32)


def owner_of(client, tokens) -> str:
    ns = client.namespace(LAYOUT)
    return client.backend.route(ns.id, tokens).candidates[0].node_id


def local_tokens(node, tokens) -> int:
    """Tokens of ``tokens`` cached on ``node`` itself."""
    rs = node.local()
    try:
        return rs.lookup(rs.register(SPEC), tokens)
    finally:
        rs.close()


SPEC = NamespaceSpec(LAYOUT, "none", "", BlockCodec(LAYOUT, "none").payload_nbytes)


def members_seen_by(node_info) -> int:
    """How many members a node sees, through its admin API."""
    with AdminClient(node_info.admin) as admin:
        return len(admin.call("GetCluster").get("nodes", []))


def test_routing_is_stable_balanced_and_one_hop(make_cluster):
    cluster = make_cluster(3)
    with KVClient.connect(cluster.url) as c, KVClient.connect(cluster.url) as c2:
        assert wait_members(c.backend, 3) and wait_members(c2.backend, 3)
        ns = c.namespace(LAYOUT)
        owners = {}
        for i in range(45):
            toks = prompt(i)
            assert ns.put(toks, kv_for(len(toks), i)) == len(toks)
            owners[i] = owner_of(c, toks)
            assert owner_of(c2, toks) == owners[i]  # another client routes alike
        share = {n.node_id: sum(1 for o in owners.values() if o == n.node_id) for n in cluster.nodes}
        assert all(count >= 7 for count in share.values()), share  # 15 each expected
        for i in (0, 1, 2, 3, 4, 5):
            toks = prompt(i)
            for node in cluster.nodes:  # the blocks went to the owner only
                want = len(toks) if node.node_id == owners[i] else 0
                assert local_tokens(node, toks) == want
            n, kv = ns.get(toks)
            assert n == len(toks) and torch.equal(kv, kv_for(len(toks), i))


def test_a_put_through_one_node_is_readable_through_any_node(make_cluster):
    cluster = make_cluster(3)
    with KVClient.connect(cluster.url) as router:
        assert wait_members(router.backend, 3)
        for info in router.backend.nodes().values():  # every node has seen the others too
            assert wait_until(lambda info=info: members_seen_by(info) == 3, 20)
        for i in range(6):
            toks = prompt(1000 + i)
            owner = owner_of(router, toks)
            others = [n for n in cluster.nodes if n.node_id != owner]
            writer, reader = others  # neither owns the prefix: prefill on one, decode on another
            kv = kv_for(len(toks), 1000 + i)
            with KVClient.connect(writer.url) as w, KVClient.connect(reader.url) as r:
                assert w.namespace(LAYOUT).put(toks, kv) == len(toks)
                assert local_tokens(cluster.by_id(owner), toks) == len(toks)  # forwarded
                assert r.namespace(LAYOUT).lookup(toks) == len(toks)
                n, got = r.namespace(LAYOUT).get(toks)
                assert n == len(toks) and torch.equal(got, kv)
            assert local_tokens(reader, toks) == len(toks)  # fetched, cached on the reader


def test_node_loss_turns_its_keys_into_misses_and_rejoin_brings_them_back(make_cluster):
    cluster = make_cluster(3)
    with KVClient.connect(cluster.url) as c:
        assert wait_members(c.backend, 3)
        ns = c.namespace(LAYOUT)
        owners = {}
        for i in range(24):
            toks = prompt(2000 + i)
            ns.put(toks, kv_for(len(toks), i))
            owners[i] = owner_of(c, toks)
        c.flush()  # on every node's SSD: a SIGKILL keeps them
        victim = cluster.by_id(owners[0])
        victim.kill()
        lost = [i for i in owners if owners[i] == victim.node_id]
        kept = [i for i in owners if owners[i] != victim.node_id]
        for i in lost + kept:  # at once, before the lease expires: misses or hits, no errors
            t0 = time.monotonic()
            n = ns.lookup(prompt(2000 + i))
            assert time.monotonic() - t0 < 10  # no hang (a liveness bound, not a speed target)
            assert n == (0 if i in lost else 4 * B)
        assert wait_members(c.backend, 2, timeout=TTL + 10)  # dropped within its TTL
        for i in kept:
            n, kv = ns.get(prompt(2000 + i))
            assert n == 4 * B and torch.equal(kv, kv_for(4 * B, i))
        assert all(ns.lookup(prompt(2000 + i)) == 0 for i in lost)
        victim.start()  # same SSD folder, same node id
        assert wait_members(c.backend, 3)
        for i in lost:  # its keys route back to it, and its SSD tier still has them
            n, kv = ns.get(prompt(2000 + i))
            assert n == 4 * B and torch.equal(kv, kv_for(4 * B, i))


def test_hot_prefix_is_replicated_and_survives_the_loss_of_its_owner(make_cluster):
    cluster = make_cluster(3, extra=["--hot-threshold", "4", "--replicas", "2"])
    with KVClient.connect(cluster.url) as c:
        assert wait_members(c.backend, 3)
        ns = c.namespace(LAYOUT)
        system = prompt(3000, blocks=4)
        owner = owner_of(c, system)
        for conv in range(8):  # many conversations behind one system prompt
            toks = np.concatenate([system, prompt(4000 + conv, blocks=2)])
            kv = kv_for(len(toks), 7)
            kv[:, :, len(system):] = kv_for(2 * B, 100 + conv)
            ns.put(toks, kv)
            n, _ = ns.get(toks)
            assert n >= len(system)
        assert wait_until(lambda: len(c.backend.view.snapshot().hot) == 1, 20)
        hot = next(iter(c.backend.view.snapshot().hot.values()))
        assert hot.replicas == 2 and hot.prefix_blocks == 4
        route = c.backend.route(ns.id, system)
        replicas = [n.node_id for n in route.owners()]
        assert owner in replicas and len(replicas) == 2
        other = cluster.by_id(next(r for r in replicas if r != owner))
        assert wait_until(lambda: local_tokens(other, system) == len(system), 20)
        c.flush()
        cluster.by_id(owner).kill()
        assert wait_members(c.backend, 2, timeout=TTL + 10)
        for conv in range(6):  # the system prompt keeps hitting, through the other replica
            n, kv = ns.get(np.concatenate([system, prompt(9000 + conv, blocks=1)]))
            assert n == len(system) and torch.equal(kv, kv_for(len(system) + 2 * B, 7)[:, :, :n])
        cluster.by_id(owner).start()  # rejoins on its SSD folder: a replica again, with the blocks
        assert wait_members(c.backend, 3)
        assert owner in [n.node_id for n in c.backend.route(ns.id, system).owners()]
        assert local_tokens(cluster.by_id(owner), system) == len(system)
        heads = {c.backend.route(ns.id, system).candidates[0].node_id for _ in range(4)}
        assert owner in heads  # reads of the shared prompt rotate back onto it
        for _ in range(4):
            assert ns.get(system)[0] == len(system)


def test_daemon_starts_alone_when_etcd_is_unreachable_and_joins_when_it_answers(tmp_path):
    port = free_port()
    proc = DaemonProc(["--listen", f"tcp://127.0.0.1:{free_port()}", "--cpu-bytes", "64MiB",
                       "--ssd-dir", str(tmp_path), "--ssd-bytes", "64MiB",
                       "--etcd", f"http://127.0.0.1:{port}", "--cluster", "late"],
                      env={"KVSTORE_PREFAULT": "0"})
    try:
        assert wait_until(lambda: any("serving as a single node" in line for line in proc.lines), 10)
        with KVClient.connect(proc.url("tcp"), strict=True) as c:
            ns = c.namespace(LAYOUT)
            toks = prompt(5000)
            assert ns.put(toks, kv_for(len(toks), 5)) == len(toks)
            assert ns.get(toks)[0] == len(toks)
        with EtcdProc(client_port=port) as etcd, KVClient.connect(etcd.url("late")) as c:
            assert wait_members(c.backend, 1)  # registered once etcd answered
            assert c.namespace(LAYOUT).get(prompt(5000))[0] == 4 * B
    finally:
        proc.terminate()


def test_cluster_keeps_serving_when_etcd_is_lost_and_recovers(make_cluster, etcd):
    cluster = make_cluster(2)
    with KVClient.connect(cluster.url) as c:
        assert wait_members(c.backend, 2)
        ns = c.namespace(LAYOUT)
        for i in range(10):
            ns.put(prompt(6000 + i), kv_for(4 * B, i))
        etcd.stop()
        time.sleep(TTL + 2)  # longer than a lease: nothing may expire while etcd is away
        assert wait_until(lambda: not c.backend.view.etcd_ok, 10)
        assert len(c.backend.nodes()) == 2  # the last known membership
        for i in range(10):
            n, kv = ns.get(prompt(6000 + i))
            assert n == 4 * B and torch.equal(kv, kv_for(4 * B, i))
        with KVClient.connect(cluster.url, connect_wait=1.0) as late:  # starts empty: misses
            assert late.namespace(LAYOUT).lookup(prompt(6000)) == 0
        etcd.start()
        assert wait_until(lambda: c.backend.view.etcd_ok, 20)
        with KVClient.connect(cluster.url) as again:
            assert wait_members(again.backend, 2)
            assert again.namespace(LAYOUT).get(prompt(6001))[0] == 4 * B


def test_cluster_with_auth_peers_use_the_shared_token(make_cluster, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-cluster-token\n")
    token_file.chmod(0o600)
    admin_token = tmp_path / "admin-token"  # data-plane auth on: the admin API needs its own
    admin_token.write_text("s3cret-admin-token\n")
    admin_token.chmod(0o600)
    cluster = make_cluster(2, name="auth", extra=["--auth-token-file", str(token_file),
                                                  "--admin-token-file", str(admin_token)])
    with KVClient.connect(cluster.url, token="s3cret-cluster-token") as router:
        assert wait_members(router.backend, 2)
        toks = prompt(7000)
        owner = owner_of(router, toks)
        other = next(n for n in cluster.nodes if n.node_id != owner)
        kv = kv_for(len(toks), 70)
        with KVClient.connect(other.url, token="s3cret-cluster-token") as direct:
            assert direct.namespace(LAYOUT).put(toks, kv) == len(toks)  # forwarded, with auth
        n, got = router.namespace(LAYOUT).get(toks)  # from the owner
        assert n == len(toks) and torch.equal(got, kv)


def test_asyncio_client_through_the_cluster(make_cluster):
    import asyncio

    from kvstore.client import AsyncKVClient

    cluster = make_cluster(2, name="aio")

    async def main():
        async with await AsyncKVClient.connect(cluster.url) as c:
            assert wait_members(c.sync.backend, 2)
            ns = await c.namespace(LAYOUT)
            toks = prompt(8000)
            kv = kv_for(len(toks), 80)
            assert await ns.put(toks, kv) == len(toks)
            assert await ns.lookup(toks) == len(toks)
            n, got = await ns.get(toks)
            return n, got, kv

    n, got, kv = asyncio.run(main())
    assert n == 4 * B and torch.equal(got, kv)


def test_a_joining_node_takes_only_its_keys_and_pulls_their_blocks_on_first_read(make_cluster,
                                                                                   etcd):
    from tests.cluster.conftest import Node

    cluster = make_cluster(2, name="grow")
    with KVClient.connect(cluster.url) as c:
        assert wait_members(c.backend, 2)
        ns = c.namespace(LAYOUT)
        before = {}
        for i in range(30):
            toks = prompt(10_000 + i)
            ns.put(toks, kv_for(len(toks), i))
            before[i] = owner_of(c, toks)
        new = Node(etcd, "grow", "n2", [])
        cluster.nodes.append(new)
        assert wait_members(c.backend, 3)
        after = {i: owner_of(c, prompt(10_000 + i)) for i in before}
        moved = [i for i in before if after[i] != before[i]]
        assert moved and all(after[i] == new.node_id for i in moved)  # only to the new node
        assert len(moved) < 20
        for i in before:  # every key still hits: the new owner pulls from the old one
            n, kv = ns.get(prompt(10_000 + i))
            assert n == 4 * B and torch.equal(kv, kv_for(4 * B, i))
        for i in moved:
            assert local_tokens(new, prompt(10_000 + i)) == 4 * B
