"""A real daemon (evict-ahead on, its default) frees room ahead of writes into a full arena,
and what it stores stays byte-exact over shm and tcp."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.demo.daemon_process import DaemonProc, daemon_args
from kvstore.transport.remote import RemoteStore
from tests.store.helpers import wait_for
from tests.transport.conftest import blocks_for, spec_of

pytestmark = pytest.mark.integration
CAPACITY = 64  # blocks of 4 KiB in the daemon's arena (a sixteenth: 4 blocks of room ahead)
BT = 16


def toks(seed: int, nblocks: int) -> np.ndarray:
    return np.arange(nblocks * BT, dtype=np.uint32) + seed * 1_000_000


def cpu_tier(rs: RemoteStore):
    return next(t for t in rs.stats().tiers if t.name == "cpu")


@pytest.mark.parametrize("carrier", ["shm", "tcp"])
def test_a_full_arena_has_room_made_ahead_and_keeps_every_byte(carrier, sockdir):
    d = DaemonProc(daemon_args(sockdir, (carrier,), "--cpu-bytes", str(CAPACITY * 4096)))
    try:
        with RemoteStore.connect(d.url(carrier), timeout=10, strict=True) as rs:
            spec = spec_of()
            ns = rs.register(spec)
            prompts = [toks(seed, 4) for seed in range(1, 25)]  # 96 blocks: evicts
            for p in prompts:
                assert rs.put(ns, p, blocks_for(p, spec)) == len(p)
            tier = cpu_tier(rs)
            assert tier.evictions > 0
            # after the last write the daemon freed room for as many blocks again
            wait_for(lambda: cpu_tier(rs).used_bytes <= tier.capacity_bytes - 4 * 4096)
            kept = [p for p in prompts if rs.lookup(ns, p) == len(p)]
            assert prompts[-1] is kept[-1] and len(kept) < len(prompts)
            for p in kept:  # the most recent stay, byte for byte
                n, got = rs.get(ns, p)
                assert n == len(p)
                assert [bytes(g) for g in got] == [bytes(b) for b in blocks_for(p, spec)]
    finally:
        assert d.terminate(timeout=60) == 0, "".join(d.lines[-20:])
