"""Caps hold under a long random workload: the CPU arena and the SSD tier never exceed theirs."""

import os
import random

from .helpers import make_spec, payloads_for


def test_caps_hold_under_a_long_random_workload(store_factory):
    specs = [make_spec(model="a"), make_spec(model="b", layers=3), make_spec(model="c", layers=7)]
    cpu_cap, ssd_cap = 24 * 4096, 160 * 1024
    s = store_factory(cpu_bytes=cpu_cap, cpu_page_bytes=4096, ssd_bytes=ssd_cap,
                      segment_bytes=32 << 10, demotion_buffer_bytes=8192)
    ns = [s.register(sp) for sp in specs]
    arena = s.arena().path
    rng = random.Random(1)
    leases = []
    for step in range(2500):
        i = rng.randrange(3)
        toks = [rng.randrange(6) for _ in range(4)] + [rng.randrange(50) for _ in range(4 * rng.randrange(6))]
        r = rng.random()
        if r < 0.5:
            s.put(ns[i], toks, payloads_for(ns[i], specs[i], toks))
        elif r < 0.85:
            n, got = s.get(ns[i], toks)
            assert got == payloads_for(ns[i], specs[i], toks)[: n // 4]
        elif r < 0.9:
            s.delete(ns[i], toks)
        elif r < 0.95 and len(leases) < 3:
            leases.append(s.lease_read(ns[i], toks).lease_id)
        elif leases:
            s.release(leases.pop(0))
        cpu = s.tier_stats("cpu")
        assert cpu.used_bytes <= cpu_cap and os.path.getsize(arena) == cpu_cap
        assert s.tier_stats("ssd").used_bytes <= ssd_cap
        if step % 250 == 0:
            s.check()
        if step % 500 == 499:
            s.flush()
    s.wait_writes()
    assert s.tier_stats("ssd").used_bytes <= ssd_cap
    stats = s.stats()
    cpu = stats.tiers[0]
    assert cpu.demotions > 0 and cpu.evictions > 0
    assert stats.tiers[1].blocks > 0
    s.check()
