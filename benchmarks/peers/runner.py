"""Runner: every system once per round, the first rotating, each system's median of the rounds.

    python -m benchmarks.peers [--blocks 64] [--block-bytes 2MiB] [--rounds 7]
                               [--systems memcpy,kvstore-shm,...] [--peers-python PATH]
                               [--out DIR]

All workers start first (servers up, memory touched, one untimed warm-up
round each); then round r asks each system in turn, starting with system
r mod n, for one timed round (PUT, GET checked byte for byte, lookups).
Only one system runs at a time; the others wait on their stdin. Results:
``peers.json``, ``peers.md`` and ``peers.png`` under the folder printed at
the end (default ``benchmarks/results/peers-<time>``). A system whose client
or server is missing is reported as "not installed"; one that fails is
reported with its error, never with numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.peers.catalog import BY_NAME, CATALOG
from benchmarks.peers.report import SystemRun, last_line, summarize, write_reports
from benchmarks.peers.workers import ROOT, Worker, netns_missing
from benchmarks.peers.workload import Workload
from kvstore.sizes import parse_size


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=64)
    p.add_argument("--block-bytes", default="2MiB")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lookup-calls", type=int, default=20, help="lookups per round (median kept)")
    p.add_argument("--systems", default=",".join(s.name for s in CATALOG))
    p.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                   help="python of the peers' venv (default .venv-peers; if absent, this python)")
    p.add_argument("--out", help="results folder (default benchmarks/results/peers-<time>)")
    p.add_argument("--start-timeout", type=float, default=600)
    p.add_argument("--round-timeout", type=float, default=300)
    return p.parse_args(argv)


def python_for(venv: str, peers_python: str) -> str:
    if venv == "peers" and Path(peers_python).exists():
        return peers_python
    return sys.executable


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n for n in args.systems.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {list(BY_NAME)}")
    w = Workload(args.blocks, parse_size(args.block_bytes), args.rounds, args.lookup_calls)
    out = Path(args.out or ROOT / "benchmarks" / "results" / time.strftime("peers-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"peers: {w.blocks} x {w.block_bytes} B, {w.rounds} rounds; load {load_before}", flush=True)
    runs = {n: SystemRun(BY_NAME[n], python_for(BY_NAME[n].venv, args.peers_python)) for n in names}
    workers: dict[str, Worker] = {}
    try:
        for n, run in runs.items():
            missing = netns_missing() if run.spec.netns else None
            if missing:
                run.started({"not_installed": missing})
                continue
            workers[n] = Worker(run.spec, run.python, w, out / f"{n}.log")
        for n, run in runs.items():
            if n in workers:
                run.started(workers[n].receive(args.start_timeout))
            print(f"  {n}: {run.status} {last_line(run.reason)}", flush=True)
        live = [n for n in names if runs[n].status == "ok"]
        for r in range(w.rounds):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for n in order:
                if runs[n].status == "ok":
                    runs[n].add_round(workers[n].round(r, args.round_timeout), os.getloadavg()[0])
            print(f"  round {r + 1}/{w.rounds} (first: {order[0] if order else '-'}); "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    summary = summarize(w, list(runs.values()), load_before, os.getloadavg())
    print(write_reports(out, w, summary))
    print(f"results: {out}")
    return 0 if all(r.status in ("ok", "not installed") for r in runs.values()) else 1
