"""Per-tenant SSD quotas in the store: one segment log per tenant (``kvstore.store.tenant_ssd``).

Two tenants over the real SSD tier (through ``FaultyFileSystem``): a tenant
over its SSD quota frees its own SSD blocks, never the other's; global
pressure takes from the tenant above its fair share; a put larger than the
quota is refused; ``ssd:0`` keeps a tenant off the disk; a restart finds
every tenant's log again.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from kvstore.errors import QuotaExceeded
from kvstore.store.tenant_ssd import PREFIX, record_bytes

from .helpers import make_spec, payloads_for

pytestmark = pytest.mark.unit

KiB = 1 << 10


def tenant_spec(tenant: str):
    return dataclasses.replace(make_spec(dim=128), tenant=tenant)  # 8 KiB blocks


def prompt(i: int, nblocks: int = 4) -> list[int]:
    return [i] + list(range(1000 * i + 1, 1000 * i + 4 * nblocks))


def ssd_store(store_factory, **kw):
    kw.setdefault("cpu_bytes", 256 * KiB)
    kw.setdefault("ssd_bytes", 4 << 20)
    kw.setdefault("segment_bytes", 64 * KiB)
    return store_factory(**kw)


def put_all(s, ns, spec, ids) -> None:
    for i in ids:
        assert s.put(ns, prompt(i), payloads_for(ns, spec, prompt(i))) == 16


def served_exact(s, ns, spec, i) -> bool:
    n, got = s.get(ns, prompt(i))
    return n == 16 and got == payloads_for(ns, spec, prompt(i))


def test_a_tenant_over_its_ssd_quota_frees_only_its_own_ssd_blocks(store_factory):
    s = ssd_store(store_factory, tenant_quotas={"bob": {"ssd": 256 * KiB}})
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    put_all(s, ns_a, spec_a, range(10))  # 320 KiB of alice: on the SSD after the flush
    s.flush()
    alice_on_ssd = s.tenant_usage()["alice"]["ssd_used"]
    assert alice_on_ssd >= 10 * 4 * 8 * KiB
    put_all(s, ns_b, spec_b, range(100, 200))  # 3.2 MiB of bob through a 256 KiB SSD quota
    s.flush()
    usage = s.tenant_usage()
    assert 0 < usage["bob"]["ssd_used"] <= 256 * KiB
    assert usage["alice"]["ssd_used"] == alice_on_ssd  # not one of alice's segments went
    assert all(served_exact(s, ns_a, spec_a, i) for i in range(10))
    assert not all(s.lookup(ns_b, prompt(i)) == 16 for i in range(100, 200))  # bob lost his own
    written = s.tier_stats("ssd").bytes_in
    s.flush()  # bob's blocks still in memory are not rewritten over and over (no churn)
    assert s.tier_stats("ssd").bytes_in == written
    s.check()


def test_global_pressure_takes_from_the_tenant_above_its_fair_share(store_factory):
    s = ssd_store(store_factory, ssd_bytes=1 << 20)  # no quotas: fair share 512 KiB each
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    put_all(s, ns_a, spec_a, range(6))  # ~288 KiB on disk: within alice's share
    s.flush()
    alice_on_ssd = s.tenant_usage()["alice"]["ssd_used"]
    put_all(s, ns_b, spec_b, range(100, 200))
    s.flush()
    usage = s.tenant_usage()
    assert usage["alice"]["ssd_used"] == alice_on_ssd
    assert usage["alice"]["ssd_used"] + usage["bob"]["ssd_used"] <= 1 << 20
    assert all(served_exact(s, ns_a, spec_a, i) for i in range(6))
    s.check()


def test_demotion_respects_the_ssd_quota(store_factory):
    """A small CPU tier demotes every put; bob's demotions stay within his SSD quota."""
    s = ssd_store(store_factory, cpu_bytes=128 * KiB, write_behind_seconds=0,
                  tenant_quotas={"bob": {"ssd": 192 * KiB}})
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    put_all(s, ns_a, spec_a, range(8))
    put_all(s, ns_b, spec_b, range(100, 160))
    s.wait_writes()
    assert 0 < s.tenant_usage()["bob"]["ssd_used"] <= 192 * KiB
    assert all(served_exact(s, ns_a, spec_a, i) for i in range(8))
    s.check()


def test_a_put_larger_than_the_ssd_quota_is_refused(store_factory):
    s = ssd_store(store_factory, tenant_ssd_bytes=64 * KiB)
    spec = tenant_spec("carol")
    ns = s.register(spec)
    big = prompt(1, nblocks=16)  # 128 KiB
    with pytest.raises(QuotaExceeded, match="SSD quota of 65536"):
        s.put(ns, big, payloads_for(ns, spec, big))
    assert s.lookup(ns, big) == 0
    s.set_quota("carol", ssd_bytes=1 << 20)
    assert s.put(ns, big, payloads_for(ns, spec, big)) == 64


def test_ssd_quota_zero_keeps_a_tenant_off_the_disk(store_factory):
    s = ssd_store(store_factory, tenant_quotas={"bob": {"ssd": 0}})
    spec_b = tenant_spec("bob")
    ns_b = s.register(spec_b)
    put_all(s, ns_b, spec_b, range(4))  # not refused: memory only
    s.flush()
    assert s.tenant_usage()["bob"]["ssd_used"] == 0
    assert all(served_exact(s, ns_b, spec_b, i) for i in range(4))
    put_all(s, ns_b, spec_b, range(10, 40))  # past the CPU tier: dropped, never demoted
    s.wait_writes()
    assert s.tenant_usage()["bob"]["ssd_used"] == 0
    s.check()


def test_lowering_the_ssd_quota_frees_the_tenants_own_oldest_segments(store_factory):
    s = ssd_store(store_factory)
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    put_all(s, ns_a, spec_a, range(4))
    put_all(s, ns_b, spec_b, range(100, 110))
    s.flush()
    alice_on_ssd = s.tenant_usage()["alice"]["ssd_used"]
    assert s.tenant_usage()["bob"]["ssd_used"] > 128 * KiB
    quotas = s.set_quota("bob", ssd_bytes=128 * KiB)
    assert quotas["ssd_quota"] == 128 * KiB and quotas["ssd_used"] <= 128 * KiB
    assert s.tenant_usage()["alice"]["ssd_used"] == alice_on_ssd
    assert all(served_exact(s, ns_a, spec_a, i) for i in range(4))
    s.wait_writes()
    s.check()


def test_each_tenant_log_comes_back_after_a_restart(store_factory, tmp_path):
    s = ssd_store(store_factory, tenant_quotas={"bob": {"ssd": 512 * KiB}})
    spec_a, spec_b = tenant_spec("alice"), tenant_spec("bob")
    ns_a, ns_b = s.register(spec_a), s.register(spec_b)
    put_all(s, ns_a, spec_a, range(3))
    put_all(s, ns_b, spec_b, range(100, 103))
    s.flush()
    s.close()
    logs = sorted(n for n in os.listdir(tmp_path / "ssd") if n.startswith(PREFIX))
    assert logs == sorted(PREFIX + t.encode().hex() for t in ("alice", "bob"))
    s2 = ssd_store(store_factory, tenant_quotas={"bob": {"ssd": 512 * KiB}})
    assert all(served_exact(s2, ns_a, spec_a, i) for i in range(3))
    assert all(served_exact(s2, ns_b, spec_b, i) for i in range(100, 103))
    assert 0 < s2.tenant_usage()["bob"]["ssd_used"] <= 512 * KiB
    s2.check()


def test_record_bytes_bounds_a_record_on_disk():
    assert record_bytes(8192) >= 8192 + 128
    assert record_bytes(8192) % 4096 == 0


def test_a_folder_from_before_per_tenant_logs_still_serves_and_deletes(tmp_path):
    """An older daemon's shared log holds alice's record at the top of the folder."""
    import numpy as np

    from kvstore.keys import ROOT_KEY
    from kvstore.ssd.record import SSDRecordHeader
    from kvstore.ssd.tier import SSDTier
    from kvstore.store.quotas import Quotas
    from kvstore.store.tenant_ssd import TenantSSD

    ns, key, payload = bytes([7]) * 16, bytes([8]) * 16, bytes(range(256)) * 32
    old = SSDTier(tmp_path, 1 << 20, segment_bytes=64 * KiB)
    old.write(SSDRecordHeader(ns, key, ROOT_KEY, np.arange(4), payload_len=len(payload)), payload)
    old.close()

    def open_tier():
        return TenantSSD(str(tmp_path), 1 << 20, 64 * KiB, "auto",
                         lambda d, c, s, comp: SSDTier(d, c, segment_bytes=s, compression=comp),
                         Quotas(1 << 20, 1 << 20), {ns: "alice"}.get)

    ssd = open_tier()
    ((header, loc),) = ssd.recover()
    assert (bytes(header.key), ssd.read(loc)) == (key, payload)
    ssd.remove(ns, key)  # alice's namespace: her log has nothing, the default log has it
    ssd.close()
    ssd = open_tier()
    assert ssd.recover() == []  # deleted for good
    ssd.close()
