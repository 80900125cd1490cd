"""GPU tier (needs CUDA; skipped without it)."""

import pytest

from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, payloads_for

pytestmark = pytest.mark.gpu


def test_gpu_tier_slots_round_trip():
    import torch

    from kvstore.store.gpu_tier import GPUTier

    tier = GPUTier(1 << 20)
    slot = tier.alloc(4096)
    data = bytes(range(256)) * 16
    tier.write(slot, data)
    assert tier.read(slot) == data
    out = bytearray(4096)
    tier.read_into(slot, out)
    assert bytes(out) == data
    src = torch.arange(4096, dtype=torch.uint8, device="cuda")
    tier.write(slot, src)
    assert torch.equal(tier.view(slot), src)
    tier.free(slot)
    tier.close()


def test_puts_land_on_gpu_and_demote_to_cpu_then_ssd(tmp_path):
    spec = make_spec()
    cfg = StoreConfig(gpu_bytes=8 * 4096, cpu_bytes=16 * 4096, ssd_dir=str(tmp_path),
                      ssd_bytes=4 << 20, segment_bytes=64 << 10)
    with TieredStore(cfg) as s:
        assert [t.name for t in s.stats().tiers] == ["gpu", "cpu", "ssd"]
        ns = s.register(spec)
        ps = [list(range(i * 1000, i * 1000 + 16)) for i in range(64)]
        for t in ps:
            assert s.put(ns, t, payloads_for(ns, spec, t)) == 16
        assert s.tier_stats("gpu").demotions > 0 and s.tier_stats("cpu").demotions > 0
        for t in ps:
            assert s.get(ns, t) == (16, payloads_for(ns, spec, t))
        lease = s.lease_read(ns, ps[-1])  # GPU-resident blocks move to the arena
        assert [bytes(s.read_slot(x)) for x in lease.slots] == payloads_for(ns, spec, ps[-1])
        s.release(lease.lease_id)
        s.flush()
        s.check()
