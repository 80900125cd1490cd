"""The client side of ``benchmarks.concurrency``: one system's client and the op stream of one process.

Each client process owns one connection (kvstore through the public API,
``KVClient.connect(url).namespace(layout)``; Redis through redis-py with
hiredis) and issues a mixed stream of single-block operations until the
window ends, timing each:

* ``lookup`` of a preloaded key: ``ns.lookup(tokens)`` / ``EXISTS``;
* ``get`` of a preloaded 2 MiB block: ``ns.get(tokens)`` / ``GET``, every
  byte checked against what was stored;
* ``put`` of a new 2 MiB block: ``ns.put(tokens, kv)`` / ``SET``.

A key is one block of ``BLOCK_TOKENS`` token ids (kvstore) or ``kv:ID``
(Redis). Payloads: ``Payloads`` holds a few random blocks; key ``k``'s bytes
are pool block ``k % len(pool)`` with ``k`` written in its first 8 bytes, so
a block read under the wrong key fails the check as surely as a corrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kvstore.layout import KVLayout

BLOCK_TOKENS = 256
PRELOADED = 64  # keys every client reads (lookups and gets)
PUT_KEYS_PER_CLIENT = 1 << 16  # new keys of client i: PRELOADED + i * this + j (token ids stay < 2**32)
OPS = ("lookup", "get", "put")


def layout_for(block_bytes: int) -> KVLayout:
    """[2 layers, k/v, 256 tokens, 8 heads, D] fp16: 2 MiB at D = 128."""
    head_dim = block_bytes // (2 * 2 * BLOCK_TOKENS * 8 * 2)
    if head_dim <= 0 or head_dim * 2 * 2 * BLOCK_TOKENS * 8 * 2 != block_bytes:
        raise SystemExit("--block-bytes must be a multiple of 16 KiB")
    return KVLayout("concurrency", 2, 8, head_dim, "float16", BLOCK_TOKENS)


@dataclass(frozen=True)
class Mix:
    """Shares of each op kind in the stream (they sum to 1)."""

    lookup: float
    get: float
    put: float

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``"80/15/5"``: lookups / gets / puts, in percent."""
        parts = [float(p) for p in text.split("/")]
        if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
            raise SystemExit(f"--mix wants LOOKUP/GET/PUT percentages, got {text!r}")
        total = sum(parts)
        return cls(*(p / total for p in parts))

    def __str__(self) -> str:
        return f"{self.lookup:.0%} lookup / {self.get:.0%} get / {self.put:.0%} put"

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` op indexes into ``OPS``."""
        return rng.choice(3, size=n, p=[self.lookup, self.get, self.put])


class Payloads:
    """Key ``k``'s bytes: pool block ``k % len(pool)`` stamped with ``k`` (see the module doc)."""

    def __init__(self, block_bytes: int, pool: int = 4, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.pool = [rng.integers(0, 256, block_bytes, dtype=np.uint8) for _ in range(pool)]
        self.scratch = [p.copy() for p in self.pool]  # stamped in place before each put

    def block(self, key: int) -> np.ndarray:
        buf = self.scratch[key % len(self.pool)]
        buf[:8] = np.frombuffer(np.uint64(key).tobytes(), dtype=np.uint8)
        return buf

    def check(self, key: int, got: np.ndarray) -> bool:
        ref = self.pool[key % len(self.pool)]
        return (len(got) == len(ref) and int(got[:8].view(np.uint64)[0]) == key
                and np.array_equal(got[8:], ref[8:]))


class KVStoreSystem:
    """kvstore through ``kvstore.client``: ``KVClient.connect(url)`` and one namespace."""

    def __init__(self, url: str, layout: KVLayout):
        import torch

        from kvstore.client import KVClient

        self.torch = torch
        self.layout = layout
        self.client = KVClient.connect(url, strict=True, timeout=120)
        self.ns = self.client.namespace(layout)
        self.shape = (layout.num_layers, 2, BLOCK_TOKENS, layout.num_kv_heads, layout.head_dim)

    @staticmethod
    def tokens(key: int) -> np.ndarray:
        return (np.arange(BLOCK_TOKENS, dtype=np.uint64) + key * BLOCK_TOKENS).astype(np.uint32)

    def lookup(self, key: int) -> bool:
        return self.ns.lookup(self.tokens(key)) == BLOCK_TOKENS

    def get(self, key: int) -> np.ndarray | None:
        n, kv = self.ns.get(self.tokens(key))
        if n < BLOCK_TOKENS or kv is None:
            return None
        return kv.contiguous().view(self.torch.uint8).reshape(-1).numpy()

    def put(self, key: int, block: np.ndarray) -> None:
        kv = self.torch.from_numpy(block).view(self.torch.float16).reshape(self.shape)
        self.ns.put(self.tokens(key), kv)

    def close(self) -> None:
        self.client.close()


class RedisSystem:
    """Redis through redis-py (hiredis parser when installed): EXISTS / GET / SET."""

    def __init__(self, port: int):
        import redis

        self.r = redis.Redis(host="127.0.0.1", port=port)

    def lookup(self, key: int) -> bool:
        return self.r.exists(f"kv:{key}") == 1

    def get(self, key: int) -> np.ndarray | None:
        raw = self.r.get(f"kv:{key}")
        return None if raw is None else np.frombuffer(raw, dtype=np.uint8)

    def put(self, key: int, block: np.ndarray) -> None:
        self.r.set(f"kv:{key}", memoryview(block))

    def close(self) -> None:
        self.r.close()


@dataclass
class ClientResult:
    """What one client process did inside the window."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    misses: dict[str, int] = field(default_factory=lambda: {op: 0 for op in OPS})
    bad_bytes: int = 0  # gets whose bytes differ from what was stored: must stay 0
    errors: list[str] = field(default_factory=list)


def preload(system, payloads: Payloads) -> None:
    for key in range(PRELOADED):
        system.put(key, payloads.block(key))


def run_stream(system, payloads: Payloads, mix: Mix, index: int, seed: int,
               start: float, seconds: float) -> ClientResult:
    """Issue ops from ``start`` until ``start + seconds``; ops finished after the end are dropped."""
    rng = np.random.default_rng([seed, index])
    result = ClientResult()
    next_put = PRELOADED + index * PUT_KEYS_PER_CLIENT
    end = start + seconds
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    while True:
        for op_i in mix.draw(rng, 256):
            op = OPS[op_i]
            key = int(rng.integers(0, PRELOADED))
            t0 = time.monotonic()
            if t0 >= end:
                return result
            if op == "lookup":
                hit = system.lookup(key)
            elif op == "get":
                got = system.get(key)
                hit = got is not None
                if hit and not payloads.check(key, got):
                    result.bad_bytes += 1
            else:
                system.put(next_put, payloads.block(next_put))
                next_put, hit = next_put + 1, True
            t1 = time.monotonic()
            if t1 > end:
                return result
            result.latencies[op].append(t1 - t0)
            if not hit:
                result.misses[op] += 1
