"""``kvstore admin stats`` tells the truth: misses are counted, bytes served through leases too.

A real daemon (on a thread) serves a tcp and an shm client; every read path
(get, get_into, lookup, an shm read lease) is tried and the counters are read
back through the admin API and the CLI's table, as a user would.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile

import grpc
import numpy as np

from kvstore.admin import admin_pb2 as pb
from kvstore.admin import admin_pb2_grpc
from kvstore.daemon.cli import main
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.transport.remote import RemoteStore
from tests.admin.conftest import daemon_config
from tests.admin.helpers import payloads, small_spec, tokens_for


def stats(admin) -> tuple[pb.TierStats, pb.NamespaceStats]:
    reply = admin.GetStats(pb.GetStatsRequest())
    (cpu,) = reply.tiers
    (ns,) = reply.namespaces
    return cpu, ns


def test_a_lookup_that_finds_nothing_counts_as_a_miss(admin, client):
    spec = small_spec()
    ns = client.register(spec)
    cached = tokens_for(1, 3)
    client.put(ns, cached, payloads(spec, cached))
    assert client.lookup(ns, tokens_for(2, 5)) == 0  # nothing cached: 5 misses
    assert client.lookup(ns, np.concatenate([cached, tokens_for(3, 1)])) == 12  # 3 found, 1 not
    _, n = stats(admin)
    assert (n.lookup_hits, n.lookup_misses) == (3, 6)
    assert (n.hits, n.misses) == (0, 0)  # nothing was read


def test_reads_count_hits_misses_and_bytes_out(admin, client):
    spec = small_spec()
    ns = client.register(spec)
    cached = tokens_for(1, 2)
    client.put(ns, cached, payloads(spec, cached))
    asked = np.concatenate([cached, tokens_for(9, 2)])  # 2 cached blocks, then 2 not
    assert client.get(ns, asked)[0] == 8
    assert client.get_into(ns, tokens_for(4, 3))[0] == 0  # a read that finds nothing
    cpu, n = stats(admin)
    assert (n.hits, n.misses) == (2, 2 + 3)
    assert (cpu.hits, cpu.misses) == (2, 5)
    assert cpu.bytes_out == 2 * spec.block_bytes


def test_shm_read_leases_count_bytes_out(running):
    folder = tempfile.mkdtemp(prefix="kvs-stats-")
    config = daemon_config(listen=[f"shm://{folder}/kv.sock"])
    daemon = running(config=config, store=TieredStore(StoreConfig(cpu_bytes=1 << 20)))
    spec = small_spec()
    with RemoteStore.connect(daemon.url, timeout=10.0, strict=True) as client:
        assert client.capabilities.leases
        ns = client.register(spec)
        cached = tokens_for(1, 4)
        client.put(ns, cached, payloads(spec, cached))
        for _ in range(3):
            lease = client.lease_read(ns, np.concatenate([cached, tokens_for(5, 1)]))
            assert lease.num_tokens == 16
            client.release(lease.lease_id)
        assert client.lookup(ns, tokens_for(6, 2)) == 0
    with _admin(daemon) as admin:
        cpu, n = stats(admin)
    assert cpu.bytes_out == 3 * 4 * spec.block_bytes
    assert (cpu.hits, cpu.misses) == (12, 3)
    assert (n.hits, n.misses, n.lookup_hits, n.lookup_misses) == (12, 3, 0, 2)


@contextlib.contextmanager
def _admin(daemon):
    with grpc.insecure_channel(daemon.address("admin")) as ch:
        yield admin_pb2_grpc.AdminStub(ch)


def test_stats_table_shows_misses_and_hit_rates(capsys, daemon, client):
    spec = small_spec()
    ns = client.register(spec)
    cached = tokens_for(1, 1)
    client.put(ns, cached, payloads(spec, cached))
    client.lookup(ns, np.concatenate([cached, tokens_for(2, 3)]))  # 1 of 4 found
    client.get(ns, cached)  # 1 of 1 served
    assert main(["admin", "stats", "--addr", daemon.address("admin")]) == 0
    out = capsys.readouterr().out
    assert "lookup misses" in out
    assert "lookups: 1 of 4 blocks found (25.0 %)" in out
    assert "reads: 1 of 1 blocks found (100.0 %)" in out


def test_ssd_hits_are_cpu_misses(tmp_path):
    """A block read back from the SSD is a CPU miss and an SSD hit (the tiers are searched
    in order); a block cached nowhere is a miss in both."""
    spec = small_spec()
    cfg = StoreConfig(cpu_bytes=1 << 20, ssd_dir=str(tmp_path), ssd_bytes=8 << 20)
    tokens = tokens_for(1, 2)
    with TieredStore(cfg) as store:
        ns = store.register(spec)
        store.put(ns, tokens, payloads(spec, tokens))
        store.flush()
    with TieredStore(cfg) as store:  # restarted: the blocks are on the SSD only
        assert store.get(ns, np.concatenate([tokens, tokens_for(3, 1)]))[0] == 8
        by_name = {t.name: t for t in store.stats().tiers}
    cpu, disk = by_name["cpu"], by_name["ssd"]
    assert (cpu.hits, cpu.misses) == (0, 3)
    assert (disk.hits, disk.misses) == (2, 1)


def test_a_restart_on_an_ssd_folder_logs_what_it_recovered(tmp_path, caplog):
    cfg = StoreConfig(cpu_bytes=1 << 20, ssd_dir=str(tmp_path), ssd_bytes=8 << 20)
    with TieredStore(cfg) as store:
        for model, nblocks in (("a", 3), ("b", 2)):
            spec = small_spec(model)
            tokens = tokens_for(nblocks, nblocks)
            store.put(store.register(spec), tokens, payloads(spec, tokens))
        store.flush()
    with caplog.at_level(logging.INFO, logger="kvstore.store"):
        TieredStore(cfg).close()
    (record,) = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert record.getMessage().startswith("recovered 5 blocks in 2 namespaces from the SSD tier")
    assert record.levelno == logging.INFO
