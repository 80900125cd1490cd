"""Helpers of the store tests: small layouts, deterministic payloads and FakeSSD.

``FakeSSD`` is an in-memory stand-in for ``kvstore.ssd.tier.SSDTier`` with the
same interface and fault seams (``fail_writes``, ``fail_reads``,
``write_delay``). Its "disk" survives a store restart per directory, and only
what was flushed survives (``FakeSSD.crash`` forgets unflushed writes), so
durability claims are testable without the real SSD tier.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

import numpy as np
import xxhash

from kvstore.errors import StorageError
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import TierStats

_DISKS: dict[str, dict] = {}


class FakeSSD:
    def __init__(self, directory, capacity_bytes, segment_bytes=256 << 20, compression="auto"):
        self.directory = str(directory)
        self.disk = _DISKS.setdefault(self.directory, {"records": OrderedDict(), "ns": {}})
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._next = 0
        self._records: OrderedDict = OrderedDict()  # (ns, key) -> (header, data, loc)
        self._by_loc: dict[int, tuple] = {}
        self.used_bytes = 0
        for k, (header, data) in self.disk["records"].items():
            self._add(k, header, data)
        self._cb = None
        self.fail_writes = self.fail_reads = False
        self.write_delay = 0.0
        self.degraded = False
        self.writes = self.reads = self.evictions = self.flushes = 0
        self.max_used = self.used_bytes

    def _add(self, k, header, data):
        self._next += 1
        self.used_bytes += len(data)
        self._records[k] = (header, data, self._next)
        self._by_loc[self._next] = k
        return self._next

    def set_eviction_callback(self, fn) -> None:
        self._cb = fn

    def write(self, header, payload) -> int:
        if self.write_delay:
            time.sleep(self.write_delay)
        data = bytes(payload)
        evicted = []
        with self._lock:
            if self.fail_writes:
                raise StorageError("injected write failure (disk full)")
            k = (bytes(header.namespace), bytes(header.key))
            self._drop(k)
            while self._records and self.used_bytes + len(data) > self.capacity_bytes:
                old = next(iter(self._records))
                self._drop(old)
                evicted.append(old)
                self.evictions += 1
            if len(data) > self.capacity_bytes:
                raise StorageError("record larger than the SSD tier")
            loc = self._add(k, header, data)
            self.writes += 1
            self.max_used = max(self.max_used, self.used_bytes)
        if evicted and self._cb is not None:
            self._cb(evicted)
        return loc

    def _drop(self, k):
        rec = self._records.pop(k, None)
        if rec is not None:
            self._by_loc.pop(rec[2], None)
            self.used_bytes -= len(rec[1])

    def read(self, loc) -> bytes:
        with self._lock:
            self.reads += 1
            if self.fail_reads:
                raise StorageError("injected read failure")
            k = self._by_loc.get(loc)
            if k is None:
                raise StorageError(f"no record at {loc}")
            return self._records[k][1]

    def read_into(self, loc, out) -> None:
        memoryview(out)[:] = self.read(loc)

    def remove(self, namespace, key) -> None:
        with self._lock:
            self._drop((bytes(namespace), bytes(key)))

    def flush(self) -> None:
        with self._lock:
            if self.fail_writes:
                raise StorageError("injected flush failure")
            self.flushes += 1
            self.disk["records"] = OrderedDict((k, (h, d)) for k, (h, d, _) in self._records.items())

    def recover(self):
        with self._lock:  # write order
            return [(h, loc) for h, _, loc in self._records.values()]

    def save_namespaces(self, manifest) -> None:
        self.disk["ns"] = dict(manifest)

    def load_namespaces(self):
        return dict(self.disk["ns"])

    def stats(self) -> TierStats:
        with self._lock:
            return TierStats("ssd", self.capacity_bytes, self.used_bytes, len(self._records),
                             errors=0, degraded=self.degraded)

    def close(self) -> None:
        pass

    @staticmethod
    def crash(directory) -> None:
        """Nothing to do: only flushed records were ever copied to the 'disk'."""


def make_spec(block_tokens=4, layers=2, heads=2, dim=8, dtype="float16", model="m") -> NamespaceSpec:
    return NamespaceSpec(KVLayout(model, layers, heads, dim, dtype, block_tokens))


def payload_for(ns: bytes, key: bytes, size: int) -> bytes:
    """Deterministic bytes of a block: a function of (namespace, key) only."""
    seed = xxhash.xxh64_intdigest(ns + key)
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def payloads_for(ns: bytes, spec: NamespaceSpec, tokens, extra=b"") -> list[bytes]:
    from kvstore.keys import block_keys

    return [payload_for(ns, k, spec.block_bytes) for k in block_keys(tokens, spec.block_tokens, extra)]


def shm_files() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith(f"kvstore-{os.getpid()}-")}


