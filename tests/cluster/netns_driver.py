"""The client host of the namespace tests and benchmark: commands on stdin, JSON lines out.

    python tests/cluster/netns_driver.py etcd://10.77.0.1:2379/NAME [--timeout S]

Runs inside the client's namespace (``Hosts.popen``) with one
``ClusterBackend`` for its whole life (its breakers and membership persist
across the commands). One command a line, one JSON line back:

- ``wait N``: until N nodes are members (``{"nodes": {id: url}}``)
- ``fill COUNT SEED [BLOCKS]``: put COUNT prompts (``{"acked": k, "owners": {id: n}}``)
- ``measure SECONDS [EXCLUDE_ID]``: lookups over the filled prompts in turn for SECONDS:
  latency p50/p99/max of all and of those EXCLUDE_ID did not own when filled
  (``healthy_*``), hit rate
- ``fresh COUNT SEED OWNER_ID [VIA_URL]``: put COUNT new prompts owned by OWNER_ID
  (through ``etcd://``, or to the node at VIA_URL directly), then read each back
  through ``etcd://`` (``{"acked", "readable", "put_max"}``)
- ``miss URL COUNT``: COUNT lookups of unknown prompts at one node directly (its misses
  fan out to its peers): ``{"max", "p50"}``
- ``gets SECONDS THREADS``: aggregate GET throughput over the filled prompts
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

from kvstore.client.cluster_backend import ClusterBackend
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.transport.remote import RemoteStore

LAYOUT = KVLayout(model_id="netns-test", num_layers=2, num_kv_heads=2, head_dim=64,
                  dtype="float16", block_tokens=16)
SPEC = NamespaceSpec(LAYOUT)
BT = LAYOUT.block_tokens


def prompts(count: int, seed: int, blocks: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50_000, blocks * BT).astype(np.int32) for _ in range(count)]


def payloads(toks, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(SPEC.block_bytes) for _ in range(len(toks) // BT)]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


class Driver:
    def __init__(self, url: str, timeout: float):
        self.backend = ClusterBackend(url, timeout=timeout)
        self.ns = self.backend.register(SPEC)
        self.filled: list[np.ndarray] = []
        self.filled_owner: list[str] = []  # the owner when filled: "healthy" keys stay theirs

    def owner(self, toks) -> str:
        return self.backend.route(self.ns, toks).candidates[0].node_id

    def wait(self, n: str) -> dict:
        deadline = time.monotonic() + 30
        while len(self.backend.nodes()) != int(n) and time.monotonic() < deadline:
            time.sleep(0.1)
        return {"nodes": {k: v.urls[0] for k, v in self.backend.nodes().items()}}

    def fill(self, count: str, seed: str, blocks: str = "4") -> dict:
        acked, owners = 0, {}
        for i, toks in enumerate(prompts(int(count), int(seed), int(blocks))):
            if self.backend.put(self.ns, toks, payloads(toks, i)) == len(toks):
                acked += 1
                self.filled.append(toks)
                self.filled_owner.append(self.owner(toks))
                owners[self.owner(toks)] = owners.get(self.owner(toks), 0) + 1
        return {"acked": acked, "owners": owners}

    def measure(self, seconds: str, exclude: str = "") -> dict:
        lat, healthy, hits, blocks = [], [], 0, 0
        end = time.monotonic() + float(seconds)
        i = 0
        while time.monotonic() < end and self.filled:
            toks = self.filled[i % len(self.filled)]
            mine = self.filled_owner[i % len(self.filled)] != exclude
            i += 1
            t0 = time.monotonic()
            n = self.backend.lookup(self.ns, toks)
            dt = time.monotonic() - t0
            lat.append(dt)
            if mine:
                healthy.append(dt)
            hits += n // BT
            blocks += len(toks) // BT
        return {"count": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                "max": max(lat, default=0.0), "healthy_p50": pct(healthy, 0.5),
                "healthy_p99": pct(healthy, 0.99), "healthy_max": max(healthy, default=0.0),
                "hit_rate": hits / blocks if blocks else 0.0}

    def fresh(self, count: str, seed: str, owner: str, via: str = "") -> dict:
        mine = [t for t in prompts(int(count) * 8, int(seed), 4) if self.owner(t) == owner]
        mine = mine[: int(count)]
        acked, put_max = [], 0.0
        store = self.backend
        if via:
            store = RemoteStore(via, strict=True, timeout=5.0)
            store.register(SPEC)
        for i, toks in enumerate(mine):
            t0 = time.monotonic()
            n = store.put(self.ns, toks, payloads(toks, i))
            put_max = max(put_max, time.monotonic() - t0)
            if n == len(toks):
                acked.append(toks)
        if via:
            store.close()
        readable = sum(self.backend.lookup(self.ns, t) == len(t) for t in acked)
        return {"tried": len(mine), "acked": len(acked), "readable": readable,
                "put_max": put_max}

    def miss(self, url: str, count: str) -> dict:
        rs = RemoteStore(url, strict=True, timeout=5.0)
        try:
            ns = rs.register(SPEC)
            times = []
            for toks in prompts(int(count), 999, 4):
                t0 = time.monotonic()
                rs.lookup(ns, toks)
                times.append(time.monotonic() - t0)
        finally:
            rs.close()
        return {"max": max(times), "p50": pct(times, 0.5)}

    def gets(self, seconds: str, threads: str) -> dict:
        stop = time.monotonic() + float(seconds)
        counts = [0] * int(threads)
        nbytes = [0] * int(threads)
        hits = [0] * int(threads)

        def work(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                toks = self.filled[i % len(self.filled)]
                i += int(threads)
                n, blocks = self.backend.get(self.ns, toks)
                counts[k] += 1
                hits[k] += int(n == len(toks))
                nbytes[k] += sum(len(memoryview(b).cast("B")) for b in blocks)

        t0 = time.monotonic()
        pool = [threading.Thread(target=work, args=(k,)) for k in range(int(threads))]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        dt = time.monotonic() - t0
        return {"gets_per_s": sum(counts) / dt, "gbps": sum(nbytes) / dt / 1e9,
                "hit_rate": sum(hits) / max(1, sum(counts)),
                "by_node": dict(self.backend.requests_by_node)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    driver = Driver(args.url, args.timeout)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            out = getattr(driver, words[0])(*words[1:])
        except Exception as exc:  # reported to the test, which fails with it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    driver.backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
