"""GPU tier: on a GPU (marked ``gpu``, skipped without CUDA), and the same tier on CPU
tensors with a logging timeline (its copies and their order, everywhere)."""

import pytest

from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, payloads_for


@pytest.mark.gpu
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


@pytest.mark.gpu
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


# -- the same tier on CPU tensors (no GPU): its copies and their order --------------
def _cpu_tier(capacity=1 << 20):
    from kvstore.kernels.streams import HostTimeline
    from kvstore.store.gpu_tier import GPUTier

    return GPUTier(capacity, device="cpu", timeline=HostTimeline(separate_memory=True))


def _ops(tier, kind):
    return [op for op in tier.timeline.log if op.kind == kind]


def test_cpu_run_host_bytes_one_copy_each_way():
    tier = _cpu_tier()
    slot = tier.alloc(4096)
    data = bytes(range(256)) * 16
    tier.write(slot, data)
    assert tier.read(slot) == data
    out = bytearray(4096)
    tier.read_into(slot, out)
    assert bytes(out) == data
    assert [(op.label, op.nbytes) for op in _ops(tier, "copy")] == [
        ("h2d", 4096), ("d2h", 4096), ("d2h", 4096)]  # read(): one copy, no .cpu() + tobytes


def test_cpu_run_device_hits_are_device_to_device_and_event_ordered():
    import torch

    from kvstore.kernels.streams import order_of

    tier = _cpu_tier()
    slot = tier.alloc(4096)
    src = torch.arange(4096, dtype=torch.int32).to(torch.uint8)  # a "device" tensor
    tier.write(slot, src)
    dst = torch.zeros(4096, dtype=torch.uint8)
    tier.read_into(slot, dst)
    assert torch.equal(dst, src)
    log = list(tier.timeline.log)
    assert [op.label for op in log if op.kind == "copy"] == ["d2d", "d2d"]
    w = order_of(log, dict(kind="record", stream="compute", label="written"),
                 dict(kind="wait", stream="gpu-tier", label="written"),
                 dict(kind="copy", label="d2d"),
                 dict(kind="record", stream="gpu-tier", label=f"slot:{slot.offset}"))
    assert -1 not in w  # ordered after the writer's stream, not a whole-stream sync
    ready = log[w[3]].event
    r = order_of(log[w[3] + 1:], dict(kind="wait", stream="gpu-tier", event=ready),
                 dict(kind="copy", label="d2d"), dict(kind="record", label="served"),
                 dict(kind="wait", stream="compute", label="served"))
    assert -1 not in r  # the reader's stream waits for the copy; the host does not
    tier.view(slot)
    assert log[-1] != tier.timeline.log[-1] and tier.timeline.log[-1].event == ready


def test_cpu_run_store_demotes_with_one_copy_into_the_arena(tmp_path, monkeypatch):
    from kvstore.store import tiered_store

    monkeypatch.setattr(tiered_store, "cuda_available", lambda: True)
    spec = make_spec()
    cfg = StoreConfig(gpu_bytes=8 * 4096, cpu_bytes=16 * 4096, gpu_device="cpu",
                      ssd_dir=str(tmp_path), ssd_bytes=4 << 20, segment_bytes=64 << 10)
    with TieredStore(cfg) as s:
        gpu = s._tiers.tiers[0]
        assert gpu.name == "gpu" and gpu.device.type == "cpu"
        ns = s.register(spec)
        ps = [list(range(i * 1000, i * 1000 + 16)) for i in range(64)]
        for t in ps:
            assert s.put(ns, t, payloads_for(ns, spec, t)) == 16
        demoted = s.tier_stats("gpu").demotions
        assert demoted > 0
        copies = [op.label for op in gpu.timeline.log if op.kind == "copy"]
        # each put: one copy in; each demotion: one copy out, straight into its arena slot
        blocks = 64 * 16 // spec.layout.block_tokens
        assert copies.count("h2d") == blocks and copies.count("d2h") == demoted
        # demotions are not waited for: each CPU slot holds its copy's event until read
        cpu = s._tiers.cpu
        demoted_events = [op for op in gpu.timeline.log if op.label == "demoted"]
        assert len(demoted_events) == demoted and cpu._pending
        pending = dict(cpu._pending)
        for t in ps:
            assert s.get(ns, t) == (16, payloads_for(ns, spec, t))
        read = [off for off in pending if off not in cpu._pending]
        assert read  # reading a demoted block settled its copy first
        lease = s.lease_read(ns, ps[-1])
        assert [bytes(s.read_slot(x)) for x in lease.slots] == payloads_for(ns, spec, ps[-1])
        assert not any(x.offset in cpu._pending for x in lease.slots)  # settled for readers
        s.release(lease.lease_id)
        s.flush()
        s.check()
