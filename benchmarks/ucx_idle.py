"""ucx against tcp on one daemon: the daemon's CPU while a client sits idle, and lookup latency.

    python -m benchmarks.ucx_idle [--window 2] [--rounds 5] [--lookups 200] [--json PATH]

Two ``kvstore serve`` children (CPU arena only), one listening on tcp, one
on ucx; this process connects one client (``RemoteStore``) to each and
measures, in interleaved rounds:

* **idle CPU**: the daemon's CPU time (/proc utime + stime, all threads)
  over ``--window`` seconds while its one client is connected and silent,
  as a share of one core (the design asks
  < 5 % for ucx);
* **lookup p50**: ``--lookups`` lookups of 1,024 cached tokens per carrier
  per round through the synchronous API (both on the caller's thread: tcp
  on its socket, ucx progressing a worker of its own,
  ``transport/ucx_sync_channel.py``); the ratio ucx / tcp is the median of
  the per-round ratios (the design asks <= 2);
* **alookup p50**: the same lookups through the asyncio twin, run on the
  client's I/O loop (both carriers on one loop: no thread hand-off), and
  their ratio.

The daemon progresses one ucx worker per event loop from the worker's
event fd (``transport/ucx_progress.py``, ``docs/concurrency.md``); the
synchronous client arms its own worker and sleeps in ``poll`` on its fd.
``KVSTORE_UCX_SPIN_US`` (the event loops: the daemon's, the asyncio twins')
and ``KVSTORE_UCX_SYNC_SPIN_US`` (the synchronous client) poll that long
after each posted request before sleeping on the fd (both off by default:
on a loaded 2-core machine spinning costs the peer its core); both
processes inherit them.
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import base_parser, print_table, write_json
from benchmarks.proc_cpu import cpu_share
from kvstore.demo.daemon_process import DaemonProc
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.transport.io_thread import IOThread
from kvstore.transport.remote import RemoteStore

LOOKUP_TOKENS = 1024
SPEC = NamespaceSpec(KVLayout("ucx-idle", 2, 2, 16, "float16", 16))  # 4 KiB blocks
ARGS = ["--cpu-bytes", "64MiB", "--ssd-bytes", "0", "--log-level", "warning"]


class Target:
    """One daemon listening on one carrier, and this process's one client of it."""

    def __init__(self, name: str, carrier: str, env: dict | None = None):
        listen = "ucx://0.0.0.0:0" if carrier == "ucx" else f"{carrier}://127.0.0.1:0"
        self.name, self.carrier = name, carrier
        self.daemon = DaemonProc(["--listen", listen, *ARGS], env=env)
        self.tokens = np.arange(LOOKUP_TOKENS, dtype=np.uint32) + 7
        url = self.daemon.url(carrier).replace("0.0.0.0", "127.0.0.1")
        self.client = RemoteStore.connect(url, strict=True, timeout=60)
        self.ns = self.client.register(SPEC)
        blocks = [np.full(SPEC.block_bytes, i, np.uint8) for i in range(LOOKUP_TOKENS // 16)]
        self.client.put(self.ns, self.tokens, blocks)

    def lookup_seconds(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            got = self.client.lookup(self.ns, self.tokens)
            out.append(time.perf_counter() - t0)
            if got != LOOKUP_TOKENS:
                raise RuntimeError(f"{self.name}: lookup found {got} tokens")
        return out

    def alookup_seconds(self, n: int) -> list[float]:
        """``n`` asyncio-twin lookups timed on the client's I/O loop."""

        async def run() -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                got = await self.client.alookup(self.ns, self.tokens)
                out.append(time.perf_counter() - t0)
                if got != LOOKUP_TOKENS:
                    raise RuntimeError(f"{self.name}: alookup found {got} tokens")
            return out

        return IOThread.get().run(run())

    def close(self) -> None:
        self.client.close()
        self.daemon.terminate()


def _p50_and_ratio(rounds: list[list[float]], tcp_rounds: list[list[float]]) -> tuple[float, float]:
    """The p50 in µs over every round, and the median of the per-round p50 ratios to tcp."""
    p50 = float(np.median(np.concatenate(rounds))) * 1e6
    ratio = float(np.median([np.median(a) / np.median(b) for a, b in zip(rounds, tcp_rounds)]))
    return p50, ratio


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=2.0, help="seconds per idle window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=200, help="lookups per carrier per round")
    args = parser.parse_args(argv)
    load0 = os.getloadavg()[0]
    targets = [Target("tcp", "tcp"), Target("ucx", "ucx")]
    idle: dict[str, list[float]] = {t.name: [] for t in targets}
    lookups: dict[str, list[list[float]]] = {t.name: [] for t in targets}
    alookups: dict[str, list[list[float]]] = {t.name: [] for t in targets}
    try:
        for t in targets:  # warm-up
            t.lookup_seconds(20)
            t.alookup_seconds(20)
        for r in range(args.rounds):
            for t in targets:  # bursts of lookups, then the client sits idle for a window
                lookups[t.name].append(t.lookup_seconds(args.lookups))
                alookups[t.name].append(t.alookup_seconds(args.lookups))
                idle[t.name].append(cpu_share(t.daemon.pid, args.window))
            print(f"  round {r + 1}/{args.rounds}", flush=True)
    finally:
        for t in targets:
            t.close()
    rows = []
    for name, shares in idle.items():
        p50, ratio = _p50_and_ratio(lookups[name], lookups["tcp"])
        ap50, aratio = _p50_and_ratio(alookups[name], alookups["tcp"])
        rows.append({"daemon": name,
                     "idle_cpu_share": round(float(np.median(shares)), 4),
                     "idle_cpu_max": round(max(shares), 4),
                     "lookup_p50_us": round(p50, 1),
                     "lookup_vs_tcp": round(ratio, 3),
                     "alookup_p50_us": round(ap50, 1),
                     "alookup_vs_tcp": round(aratio, 3)})
    print_table(rows, title=f"daemon CPU with one idle client ({args.window:g} s windows, median of "
                            f"{args.rounds}) and lookup p50 ({LOOKUP_TOKENS} tokens)")
    event_ucx = next(r for r in rows if r["daemon"] == "ucx")
    print(f"ucx idle: {event_ucx['idle_cpu_share']:.1%} of a core (target < 5 %); ucx lookup p50 "
          f"= {event_ucx['lookup_vs_tcp']:.2f} x tcp (target <= 2), alookup "
          f"{event_ucx['alookup_vs_tcp']:.2f} x tcp; load average "
          f"{load0:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        write_json(args.json, "ucx_idle", rows, window_s=args.window, rounds=args.rounds,
                   loadavg=[load0, os.getloadavg()[0]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
