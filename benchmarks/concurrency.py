"""Concurrency: N client processes, a mixed op stream, one daemon; Redis beside it in the same run.

    python -m benchmarks.concurrency [--seconds 5] [--clients 1,4,16,64] [--systems shm,tcp,redis]
                                     [--mix 80/15/5] [--block-bytes 2MiB] [--out DIR]

For every client count and system (interleaved: each count runs every
system before the next count), a fresh server starts (``kvstore serve``
with one carrier, CPU arena only; or ``redis-server --save ''
--appendonly no`` on loopback), one helper process stores ``PRELOADED``
blocks, then N client processes (forked from this one, so torch is
imported once) connect, wait for a common start and issue the mix
(``--mix``, lookups / 2 MiB gets / 2 MiB puts in percent) for
``--seconds`` through the public API (``kvstore.client``; redis-py +
hiredis: EXISTS / GET / SET of the same bytes). See
``benchmarks.concurrency_clients`` for the keys, the payloads and the byte
check of every get.

Per point: ops/s (all kinds, and lookups/s alone), p50 / p99 latency per
kind, misses, gets with wrong bytes (must be 0), the server's CPU from
/proc (cores used over the window) and, for kvstore, ratios to Redis at
the same client count (>1: kvstore does more). The target reported (not
asserted): at 16 clients, lookups/s >= 0.5 x Redis EXISTS/s.
Writes ``concurrency.json`` and ``concurrency.md`` under the folder it
prints (``--out``, default ``out/concurrency-<UTC time>``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import concurrency_clients as cc
from benchmarks.common import machine_info
from benchmarks.proc_cpu import CpuWindow
from kvstore.demo.daemon_process import ROOT, DaemonProc
from kvstore.sizes import parse_size

KVSTORE = ("shm", "tcp")
TARGET_CLIENTS, TARGET_LOOKUP_RATIO = 16, 0.5


class Server:
    """One system's server for one point: a fresh ``kvstore serve`` or ``redis-server``."""

    def __init__(self, system: str, folder: str, cpu_bytes: int):
        self.system = system
        if system == "redis":
            from benchmarks.redis_server import RedisServer

            self.redis = RedisServer()
            self.pid, self.url = self.redis.pid, ""
            return
        url = f"shm://{folder}/kv.sock" if system == "shm" else "tcp://127.0.0.1:0"
        self.daemon = DaemonProc(["--listen", url, "--cpu-bytes", str(cpu_bytes), "--ssd-bytes", "0",
                                  "--log-level", "warning"])
        self.pid, self.url = self.daemon.pid, self.daemon.url(system)

    def connect(self, layout):
        if self.system == "redis":
            return cc.RedisSystem(self.redis.port)
        return cc.KVStoreSystem(self.url, layout)

    def close(self) -> None:
        if self.system == "redis":
            self.redis.close()
        else:
            self.daemon.terminate()


def _preload(server: Server, layout, block_bytes: int) -> None:
    system = server.connect(layout)
    cc.preload(system, cc.Payloads(block_bytes))
    system.close()


def _client(server: Server, layout, block_bytes: int, mix: cc.Mix, index: int, seed: int,
            seconds: float, ready, go, start_at, results) -> None:
    result = cc.ClientResult()
    try:
        system = server.connect(layout)
        payloads = cc.Payloads(block_bytes)
        system.lookup(0)  # the connection is up and warm before the window
        ready.put(index)
        go.wait()
        result = cc.run_stream(system, payloads, mix, index, seed, start_at.value, seconds)
        system.close()
    except BaseException as exc:  # noqa: BLE001 - reported in the results
        result.errors.append(f"client {index}: {exc!r}")
        ready.put(index)
    results.put((index, result))


def _fork_run(ctx, target, *args, timeout: float = 300.0) -> None:
    proc = ctx.Process(target=target, args=args)
    proc.start()
    proc.join(timeout)
    if proc.exitcode != 0:
        proc.kill()
        raise RuntimeError(f"{target.__name__} failed (exit {proc.exitcode})")


def run_point(system: str, clients: int, args, folder: str) -> dict:
    ctx = mp.get_context("fork")  # torch and the client modules are imported once, here
    block_bytes = parse_size(args.block_bytes)
    layout = cc.layout_for(block_bytes)
    mix = cc.Mix.parse(args.mix)
    server = Server(system, folder, parse_size(args.cpu_bytes))
    try:
        _fork_run(ctx, _preload, server, layout, block_bytes)
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        start_at = ctx.Value("d", 0.0)
        procs = [ctx.Process(target=_client, args=(server, layout, block_bytes, mix, i, args.seed,
                                                   args.seconds, ready, go, start_at, results))
                 for i in range(clients)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        start_at.value = time.monotonic() + 0.2 + 0.01 * clients
        go.set()
        time.sleep(max(0.0, start_at.value - time.monotonic()))
        window = CpuWindow(server.pid).start()
        time.sleep(args.seconds)
        cpu = window.share()
        got = [results.get(timeout=args.seconds + 300) for _ in procs]
        for p in procs:
            p.join(60)
    finally:
        server.close()
    return summarize(system, clients, args.seconds, [r for _, r in sorted(got, key=lambda x: x[0])],
                     cpu)


def summarize(system: str, clients: int, seconds: float, results: list[cc.ClientResult],
              cpu: float) -> dict:
    row = {"system": system, "clients": clients, "seconds": seconds, "server_cpu": round(cpu, 3)}
    total = 0
    for op in cc.OPS:
        lat = np.array([x for r in results for x in r.latencies[op]])
        total += len(lat)
        row[f"{op}s_per_s"] = round(len(lat) / seconds, 1)
        row[f"{op}_p50_ms"] = round(float(np.percentile(lat, 50)) * 1e3, 3) if len(lat) else None
        row[f"{op}_p99_ms"] = round(float(np.percentile(lat, 99)) * 1e3, 3) if len(lat) else None
        row[f"{op}_misses"] = sum(r.misses[op] for r in results)
    row["ops_per_s"] = round(total / seconds, 1)
    row["bad_bytes"] = sum(r.bad_bytes for r in results)
    row["errors"] = [e for r in results for e in r.errors]
    return row


def add_ratios(rows: list[dict]) -> None:
    """kvstore rows get ``*_vs_redis``: its rate over Redis's at the same client count."""
    redis = {r["clients"]: r for r in rows if r["system"] == "redis"}
    for r in rows:
        base = redis.get(r["clients"])
        if r["system"] == "redis" or base is None:
            continue
        for key in ("ops_per_s", "lookups_per_s", "gets_per_s", "puts_per_s"):
            r[f"{key}_vs_redis"] = round(r[key] / base[key], 3) if base[key] else None


def target_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        ratio = r.get("lookups_per_s_vs_redis")
        if r["clients"] == TARGET_CLIENTS and ratio is not None:
            verdict = "met" if ratio >= TARGET_LOOKUP_RATIO else "NOT met"
            out.append(f"target at {TARGET_CLIENTS} clients, {r['system']}: lookups/s = {ratio:.2f} x "
                       f"Redis EXISTS/s (>= {TARGET_LOOKUP_RATIO}): {verdict}")
    return out


def _ms(row: dict, op: str) -> str:
    p50, p99 = row[f"{op}_p50_ms"], row[f"{op}_p99_ms"]
    return "-" if p50 is None else f"{p50:.2f} / {p99:.2f}"


def markdown(rows: list[dict], mix: str, seconds: float) -> str:
    head = ("| system | clients | ops/s | lookups/s | lookup p50/p99 ms | get p50/p99 ms "
            "| put p50/p99 ms | server CPU (cores) | ops/s ÷ Redis | lookups/s ÷ Redis "
            "| misses l/g | bad bytes |")
    lines = [f"Mix {mix}, {seconds:g} s per point, 2 MiB blocks.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        vs_ops, vs_look = r.get("ops_per_s_vs_redis"), r.get("lookups_per_s_vs_redis")
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['ops_per_s']:.0f} | {r['lookups_per_s']:.0f} "
            f"| {_ms(r, 'lookup')} | {_ms(r, 'get')} | {_ms(r, 'put')} | {r['server_cpu']:.2f} "
            f"| {'-' if vs_ops is None else f'{vs_ops:.2f}'} "
            f"| {'-' if vs_look is None else f'{vs_look:.2f}'} "
            f"| {r['lookup_misses']}/{r['get_misses']} | {r['bad_bytes']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="window per point")
    parser.add_argument("--clients", default="1,4,16,64", help="client process counts")
    parser.add_argument("--systems", default="shm,tcp,redis")
    parser.add_argument("--mix", default="80/15/5", help="lookup/get/put percent")
    parser.add_argument("--block-bytes", default="2MiB")
    parser.add_argument("--cpu-bytes", default="1GiB", help="the daemon's CPU arena")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("KVSTORE_BENCH_SEED", "1")))
    parser.add_argument("--out", help="output folder (default out/concurrency-<UTC time>)")
    args = parser.parse_args(argv)
    out = Path(args.out or ROOT / "out" / time.strftime("concurrency-%Y%m%d-%H%M%S", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    systems = args.systems.split(",")
    unknown = set(systems) - {*KVSTORE, "redis"}
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)} (shm, tcp, redis)")
    import torch  # noqa: F401 - imported once before the clients fork

    import kvstore.client  # noqa: F401

    mix = str(cc.Mix.parse(args.mix))
    print(f"concurrency: {mix}, {args.seconds:g} s per point, seed {args.seed}; output in {out}",
          flush=True)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kvs-conc-") as folder:
        for n in [int(c) for c in args.clients.split(",")]:
            for system in systems:
                row = run_point(system, n, args, folder)
                rows.append(row)
                print(f"  {system:5s} x{n:<3d} {row['ops_per_s']:8.0f} ops/s  lookup p50 "
                      f"{row['lookup_p50_ms']} ms  server CPU {row['server_cpu']:.2f}"
                      f"{'  ERRORS ' + str(row['errors'][:2]) if row['errors'] else ''}", flush=True)
    add_ratios(rows)
    table = markdown(rows, mix, args.seconds)
    targets = target_lines(rows)
    print("\n" + table + "\n".join(targets))
    loads = {"loadavg_start": load0, "loadavg_end": os.getloadavg()}
    print(f"load average: start {load0[0]:.2f}, end {loads['loadavg_end'][0]:.2f}")
    doc = {"benchmark": "concurrency", "machine": machine_info(), "mix": mix, "seed": args.seed,
           "seconds": args.seconds, **loads, "targets": targets, "rows": rows}
    (out / "concurrency.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "concurrency.md").write_text(table + "\n" + "\n".join(targets) + "\n")
    print(f"wrote {out}/concurrency.json and concurrency.md")
    bad = sum(r["bad_bytes"] for r in rows)
    return 1 if bad or any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
