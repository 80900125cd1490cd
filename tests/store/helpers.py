"""Helpers of the store tests: small layouts, deterministic payloads, the SSD tier over a
``FaultyFileSystem`` (the tier's own fault seam: failing or slow disk operations)."""

from __future__ import annotations

import os

import numpy as np
import xxhash

from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.ssd.fs import FaultyFileSystem
from kvstore.ssd.tier import SSDTier


def ssd_on(fs: FaultyFileSystem):
    """A ``StoreConfig.ssd_factory``: the real SSD tier, its files through ``fs``."""

    def factory(directory, capacity_bytes, segment_bytes, compression) -> SSDTier:
        return SSDTier(directory, capacity_bytes, segment_bytes=segment_bytes,
                       compression=compression, fs=fs)

    return factory


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


def wait_for(cond, timeout=30.0):
    """Poll ``cond`` until it holds (AssertionError after ``timeout`` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
