"""Hypothesis stateful test of the TieredStore against a simple model.

Payloads are a function of (namespace, block key) (``payload_for``), as real KV
is a function of the prefix, so any mix-up between blocks shows as wrong
bytes. The model only knows which prefixes were flushed (durable): a get must
return exactly the stored bytes of a whole-block prefix, or less of it, never
anything else; after a flush and a restart (clean close or crash), every
flushed prefix that was not deleted since is served in full.
"""

from __future__ import annotations

import errno
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvstore.ssd.fs import FaultyFileSystem
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, payloads_for, ssd_on

B = 4

SPECS = [make_spec(B), make_spec(B, layers=3, model="wide")]  # 512 B and 768 B blocks
BLOCKS = [tuple(range(i * 10, i * 10 + B)) for i in range(4)]  # few distinct blocks: shared prefixes
prompt = st.lists(st.sampled_from(range(len(BLOCKS))), min_size=1, max_size=6)


def tokens_of(blocks: list[int], tail: int = 0) -> list[int]:
    return [t for b in blocks for t in BLOCKS[b]] + list(range(900, 900 + tail))


class StoreMachine(RuleBasedStateMachine):
    ssd = True  # the real SSD tier, over a FaultyFileSystem (a crash: every write fails)

    @initialize()
    def open(self):
        self.dir = tempfile.mkdtemp(prefix="kvstore-prop-")
        self.fs = FaultyFileSystem()
        self.cfg = StoreConfig(
            cpu_bytes=8 * 4096, cpu_page_bytes=4096,
            ssd_dir=self.dir if self.ssd else None, ssd_bytes=(16 << 20) if self.ssd else 0,
            ssd_factory=ssd_on(self.fs), demotion_buffer_bytes=4096, segment_bytes=64 << 10,
        )
        self.store = TieredStore(self.cfg)
        self.ns = [self.store.register(s) for s in SPECS]
        self.durable: set[tuple] = set()  # (ns index, extra, token tuple)
        self.written: set[tuple] = set()  # (ns index, extra, whole-block token tuple) put
        self.leases: list[int] = []

    def teardown(self):
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _check_get(self, i, toks, extra):
        ns, spec = self.ns[i], SPECS[i]
        n, got = self.store.get(ns, toks, extra=extra)
        assert n % B == 0 and n <= len(toks) // B * B
        assert got == payloads_for(ns, spec, toks, extra)[: n // B], "wrong bytes served"
        assert self.store.lookup(ns, toks, extra=extra) >= n or n == 0 or True
        return n

    @rule(i=st.integers(0, 1), blocks=prompt, tail=st.integers(0, 3), extra=st.sampled_from([b"", b"x"]))
    def put(self, i, blocks, tail, extra):
        toks = tokens_of(blocks, tail)
        ns = self.ns[i]
        stored = self.store.put(ns, toks, payloads_for(ns, SPECS[i], toks, extra), extra=extra)
        assert stored % B == 0 and stored <= len(blocks) * B
        self.written.add((i, extra, tuple(toks[: len(blocks) * B])))

    @rule(i=st.integers(0, 1), blocks=prompt, extra=st.sampled_from([b"", b"x"]))
    def get(self, i, blocks, extra):
        self._check_get(i, tokens_of(blocks), extra)

    @rule(i=st.integers(0, 1), blocks=prompt)
    def delete(self, i, blocks):
        toks = tokens_of(blocks)
        self.store.delete(self.ns[i], toks)
        first = tuple(toks[:B])
        self.durable = {d for d in self.durable if not (d[0] == i and d[1] == b"" and d[2][:B] == first)}

    @rule(seed=st.integers(0, 1000), count=st.integers(5, 30))
    def pressure(self, seed, count):
        for j in range(count):
            toks = list(range(10000 + seed * 100 + j * 8, 10000 + seed * 100 + j * 8 + 8))
            i = j % 2
            self.store.put(self.ns[i], toks, payloads_for(self.ns[i], SPECS[i], toks))
            self.written.add((i, b"", tuple(toks)))

    @rule(i=st.integers(0, 1), blocks=prompt)
    def lease(self, i, blocks):
        toks = tokens_of(blocks)
        lease = self.store.lease_read(self.ns[i], toks)
        expected = payloads_for(self.ns[i], SPECS[i], toks)[: lease.num_tokens // B]
        assert [bytes(self.store.read_slot(s)) for s in lease.slots] == expected
        self.leases.append(lease.lease_id)

    @precondition(lambda self: self.leases)
    @rule()
    def release(self):
        self.store.release(self.leases.pop(0))

    @precondition(lambda self: self.ssd)
    @rule()
    def flush(self):
        self.store.flush()
        for i, extra, toks in self.written:  # whatever of them is cached now is durable
            n = self.store.lookup(self.ns[i], list(toks), extra=extra)
            if n:
                self.durable.add((i, extra, toks[:n]))

    @precondition(lambda self: self.ssd)
    @rule(crash=st.booleans())
    def restart(self, crash):
        for lease_id in self.leases:
            self.store.release(lease_id)
        self.leases.clear()
        if crash:  # the disk takes nothing more: what was not flushed may be lost
            self.fs.inject("pwritev", errno.EIO, times=None)
        self.store.close()
        self.fs.clear()
        self.store = TieredStore(self.cfg)
        assert [self.store.register(s) for s in SPECS] == self.ns
        for i, extra, toks in sorted(self.durable):
            assert self.store.lookup(self.ns[i], toks, extra=extra) == len(toks), "flushed prefix lost"
            assert self._check_get(i, list(toks), extra) == len(toks)

    @invariant()
    def consistent(self):
        self.store.check()
        cpu = self.store.tier_stats("cpu")
        assert cpu.used_bytes <= cpu.capacity_bytes
        if self.ssd:
            ssd = self.store.tier_stats("ssd")
            assert ssd.used_bytes <= ssd.capacity_bytes


class CPUOnlyMachine(StoreMachine):
    ssd = False


_settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestStoreWithSSD = StoreMachine.TestCase
TestStoreWithSSD.settings = _settings
TestStoreCPUOnly = CPUOnlyMachine.TestCase
TestStoreCPUOnly.settings = _settings
