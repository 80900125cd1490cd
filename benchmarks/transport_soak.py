"""Soak: N clients x T seconds of mixed put / get / lookup / delete against a daemon, per carrier.

    python -m benchmarks.transport_soak [--clients 16] [--seconds 60] [--carriers shm,tcp,ucx]
                                        [--cpu-bytes 64MiB] [--json PATH]

One ``kvstore serve`` child process listens on every carrier; the carriers
are soaked one after the other (the daemon's memory must stay bounded across
all of them). Every client (a
thread with its own connection) works on prefixes of its own and on prefixes
shared by all; the working set is larger than the CPU arena, so blocks are
evicted while others read them. Every block read back is checked against the
bytes that were put for its tokens (a block's content is a function of its
prefix), so a wrong byte anywhere is an error. The daemon's memory is sampled
each second: its heap (RssAnon) must stay flat and its shared memory (the
arena pages it touched, RssShmem) within the arena's size.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np

from benchmarks.common import base_parser, print_table, write_json
from kvstore.demo.daemon_process import DaemonProc, daemon_args
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.sizes import parse_size
from kvstore.transport.remote import RemoteStore

SPEC = NamespaceSpec(KVLayout("soak", num_layers=2, num_kv_heads=4, head_dim=64,
                              dtype="float16", block_tokens=16))  # 32 KiB blocks
BLOCKS = 4  # blocks per prefix


def prefix(key: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(key)
    toks = rng.integers(0, 1 << 30, BLOCKS * SPEC.block_tokens, dtype=np.uint32)
    blocks = [np.random.default_rng((key, i)).integers(0, 256, SPEC.block_bytes, dtype=np.uint8)
              for i in range(BLOCKS)]
    return toks, blocks


class Client(threading.Thread):
    def __init__(self, url: str, index: int, deadline: float, shared: list[int], own: int):
        super().__init__(name=f"soak-{index}")
        self.url, self.index, self.deadline = url, index, deadline
        self.keys = shared + [10_000 * (index + 1) + k for k in range(own)]
        self.cache = {}
        self.ops = {"put": 0, "get": 0, "lookup": 0, "delete": 0}
        self.errors: list[str] = []
        self.wrong = 0
        self.latency_max = 0.0

    def run(self) -> None:
        rnd = random.Random(self.index)
        try:
            client = RemoteStore.connect(self.url, strict=True, timeout=30)
        except Exception as exc:  # pragma: no cover
            self.errors.append(repr(exc))
            return
        try:
            ns = client.register(SPEC)
            while time.monotonic() < self.deadline:
                key = rnd.choice(self.keys)
                if key not in self.cache:
                    self.cache[key] = prefix(key)
                toks, blocks = self.cache[key]
                op = rnd.choices(["get", "lookup", "put", "delete"], [40, 30, 27, 3])[0]
                t0 = time.perf_counter()
                try:
                    self.one(client, ns, op, toks, blocks)
                except Exception as exc:
                    self.errors.append(f"{op}: {exc!r}")
                    if len(self.errors) > 20:
                        return
                self.latency_max = max(self.latency_max, time.perf_counter() - t0)
                self.ops[op] += 1
        finally:
            client.close()

    def one(self, client, ns, op, toks, blocks) -> None:
        bt = SPEC.block_tokens
        if op == "put":
            n = client.put(ns, toks, blocks)
            if n % bt or n > len(toks):
                self.wrong += 1
        elif op == "lookup":
            n = client.lookup(ns, toks)
            if n % bt or n > len(toks):
                self.wrong += 1
        elif op == "delete":
            client.delete(ns, toks[: bt * 3])
        else:
            n, buf = client.get_into(ns, toks)
            if n % bt or n > len(toks):
                self.wrong += 1
                return
            for i in range(n // bt):
                got = np.frombuffer(buf, np.uint8)[i * SPEC.block_bytes : (i + 1) * SPEC.block_bytes]
                if not np.array_equal(got, blocks[i]):
                    self.wrong += 1
                    return


def soak(carriers, clients: int, seconds: float, cpu_bytes: str, folder: str) -> list[dict]:
    """One daemon listening on every carrier; each carrier soaked in turn; a row each."""
    if isinstance(carriers, str):
        carriers = [carriers]
    d = DaemonProc(daemon_args(folder, tuple(carriers), "--cpu-bytes", cpu_bytes,
                               "--log-level", "warning"))
    rows = []
    try:
        for carrier in carriers:
            rows.append(_phase(d, d.url(carrier), carrier, clients, seconds, cpu_bytes))
        rc = d.terminate()
    finally:
        d.kill()
    for row in rows:
        row["exit_code"] = rc
    return rows


def _phase(d: DaemonProc, url: str, carrier: str, clients: int, seconds: float,
           cpu_bytes: str) -> dict:
    samples = []
    deadline = time.monotonic() + seconds
    shared = list(range(1, 9))
    workers = [Client(url, i, deadline, shared, own=40) for i in range(clients)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        samples.append(d.rss())
        time.sleep(min(1.0, max(0.1, seconds / 20)))
    for w in workers:
        w.join()
    samples.append(d.rss())
    ops = sum(sum(w.ops.values()) for w in workers)
    anon = [s.get("RssAnon", 0) for s in samples]
    warm = anon[len(anon) // 4]
    errors = [e for w in workers for e in w.errors]
    return {
        "name": carrier,
        "clients": clients,
        "seconds": seconds,
        "ops": ops,
        "ops_per_s": ops / seconds,
        "errors": len(errors),
        "wrong_data": sum(w.wrong for w in workers),
        "latency_max_ms": 1000 * max(w.latency_max for w in workers),
        "rss_anon_max_mib": max(anon) / 2**20,
        "rss_anon_growth_mib": (anon[-1] - warm) / 2**20,
        "rss_shmem_max_mib": max(s.get("RssShmem", 0) for s in samples) / 2**20,
        "arena_mib": parse_size(cpu_bytes) / 2**20,
        "first_errors": errors[:3],
    }


def main(argv=None) -> int:
    import tempfile

    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--carriers", default="shm,tcp,ucx")
    parser.add_argument("--cpu-bytes", default="64MiB")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvs-soak-") as folder:
        rows = soak(args.carriers.split(","), args.clients, args.seconds, args.cpu_bytes, folder)
    cols = ["name", "clients", "seconds", "ops", "ops_per_s", "errors", "wrong_data",
            "latency_max_ms", "rss_anon_max_mib", "rss_anon_growth_mib", "rss_shmem_max_mib",
            "arena_mib", "exit_code"]
    print_table(rows, cols, title="transport soak")
    for row in rows:
        for err in row["first_errors"]:
            print(f"  {row['name']}: {err}")
    if args.json:
        write_json(args.json, "transport_soak", rows)
    return 0 if all(r["errors"] == 0 and r["wrong_data"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
