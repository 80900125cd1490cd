"""``kvstore admin cluster`` and the cluster settings of ``kvstore serve``."""

from __future__ import annotations

import json

import pytest

from kvstore.client import KVClient
from kvstore.cluster.etcd import wait_until
from kvstore.daemon.cli import main
from kvstore.daemon.config import load_config
from kvstore.errors import InvalidArgument
from tests.cluster.conftest import needs_etcd, wait_members

pytestmark = pytest.mark.integration


@needs_etcd
def test_admin_cluster_lists_members_leases_and_usage(make_cluster, capsys):
    cluster = make_cluster(2, name="adm")
    with KVClient.connect(cluster.url) as c:
        assert wait_members(c.backend, 2)
        infos = c.backend.nodes()
    addr = next(iter(infos.values())).admin
    assert wait_until(lambda: main(["admin", "cluster", "--json", "--addr", addr]) == 0
                      and len(json.loads(capsys.readouterr().out)["nodes"]) == 2, 20)
    assert main(["admin", "cluster", "--json", "--addr", addr]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["enabled"] and doc["cluster"] == "adm" and doc["etcd_ok"] and doc["registered"]
    assert {n["node_id"] for n in doc["nodes"]} == set(infos)
    assert sum(bool(n.get("self")) for n in doc["nodes"]) == 1
    for n in doc["nodes"]:
        assert int(n["capacity_bytes"]) > 0 and int(n["lease_ttl"]) == 3 and n["lease_id"]
    assert main(["admin", "cluster", "--addr", addr]) == 0
    text = capsys.readouterr().out
    assert "cluster adm" in text and all(node_id in text for node_id in infos)


def test_admin_cluster_on_a_single_daemon(capsys):
    from tests.admin.conftest import DaemonThread, daemon_config

    d = DaemonThread(daemon_config()).start()
    try:
        assert main(["admin", "cluster", "--addr", d.address("admin")]) == 0
        assert "not clustered" in capsys.readouterr().out
    finally:
        d.stop()


def test_cluster_settings_from_flags_and_env(tmp_path):
    config = load_config(
        {"etcd": "http://127.0.0.1:2379", "cluster": "prod", "cluster_ttl": 4,
         "ssd_dir": str(tmp_path), "ssd_bytes": 0, "cpu_bytes": "64MiB"},
        environ={"KVSTORE_ADVERTISE": "tcp://10.0.0.5:7801,ucx://10.0.0.5:7802",
                 "KVSTORE_REPLICAS": "3"},
    )
    assert config.advertise == ["tcp://10.0.0.5:7801", "ucx://10.0.0.5:7802"]
    assert (config.cluster, config.cluster_ttl, config.replicas) == ("prod", 4, 3)


@pytest.mark.parametrize("bad", [
    {"etcd": "http://127.0.0.1:x"},
    {"etcd": "http://127.0.0.1:2379", "cluster": "no spaces"},
    {"cluster_ttl": 1},
    {"replicas": 0},
    {"advertise": ["http://x:1"]},
    {"node_id": "a/b"},
])
def test_bad_cluster_settings_are_refused(bad, tmp_path):
    with pytest.raises(InvalidArgument):
        load_config({"ssd_dir": str(tmp_path), "ssd_bytes": 0, "cpu_bytes": "64MiB", **bad},
                    environ={})
