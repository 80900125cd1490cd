"""A real etcd and real daemons on loopback for the cluster tests."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import torch

from kvstore.cluster.etcd import wait_until
from kvstore.cluster.peers import PEER_CLIENT_PREFIX
from kvstore.demo.daemon_process import DaemonProc, free_port
from kvstore.demo.etcd_process import EtcdProc, etcd_binary
from kvstore.layout import KVLayout
from kvstore.transport.remote import RemoteStore

LAYOUT = KVLayout(model_id="cluster-test", num_layers=2, num_kv_heads=2, head_dim=8,
                  dtype="float16", block_tokens=16)
TTL = 3

needs_etcd = pytest.mark.skipif(etcd_binary() is None,
                                reason="etcd not installed (scripts/install_system.sh)")


def kv_for(tokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LAYOUT.kv_shape(tokens), generator=g).to(torch.float16)


class Node:
    """One daemon of the test cluster, restartable on the same SSD folder (same node id)."""

    def __init__(self, etcd: EtcdProc, cluster: str, name: str, extra: list[str]):
        self.etcd, self.cluster, self.name, self.extra = etcd, cluster, name, extra
        self.ssd_dir = tempfile.mkdtemp(prefix=f"kvstore-{name}-")
        self.proc: DaemonProc | None = None
        self.start()

    def start(self) -> None:
        self.port = free_port()
        self.proc = DaemonProc(
            ["--listen", f"tcp://127.0.0.1:{self.port}", "--cpu-bytes", "64MiB",
             "--ssd-dir", self.ssd_dir, "--ssd-bytes", "256MiB", "--etcd", self.etcd.endpoint,
             "--cluster", self.cluster, "--cluster-ttl", str(TTL), *self.extra],
            env={"KVSTORE_PREFAULT": "0"},
        )

    @property
    def url(self) -> str:
        return self.proc.url("tcp")

    @property
    def node_id(self) -> str:
        with open(f"{self.ssd_dir}/node-id") as f:
            return f.read().strip()

    def local(self) -> RemoteStore:
        """A client that sees this node's own blocks only (a peer's hello: no fan-out)."""
        return RemoteStore(self.url, strict=True, client_name=PEER_CLIENT_PREFIX + "test")

    def client(self, **kwargs) -> RemoteStore:
        """A plain client of this node (its misses fan out to the peers)."""
        return RemoteStore(self.url, strict=True, **kwargs)

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.terminate()
        shutil.rmtree(self.ssd_dir, ignore_errors=True)


class Cluster:
    def __init__(self, etcd: EtcdProc, size: int, name: str, extra: list[str]):
        self.etcd, self.name = etcd, name
        self.nodes = [Node(etcd, name, f"n{i}", extra) for i in range(size)]

    @property
    def url(self) -> str:
        return self.etcd.url(self.name)

    def by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def etcd():
    if etcd_binary() is None:
        pytest.skip("etcd not installed (scripts/install_system.sh)")
    with EtcdProc() as proc:
        yield proc


@pytest.fixture
def make_cluster(etcd):
    made = []

    def make(size: int = 3, name: str = "test", extra: list[str] | None = None) -> Cluster:
        cluster = Cluster(etcd, size, name, extra or [])
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def wait_members(backend, count: int, timeout: float = 20.0) -> bool:
    return wait_until(lambda: len(backend.nodes()) == count, timeout)
