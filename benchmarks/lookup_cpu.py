"""The client's CPU per lookup against a real daemon, beside a raw round trip's (one run).

``python -m benchmarks.lookup_cpu [--rounds 5] [--calls 1000] [--pin CPU] [--json PATH]``

``benchmarks.lookup`` reports wall time, which on this VM is mostly the
kernel's cross-CPU wake-ups; this one reports what each call costs the
calling process: ``time.process_time()`` around every call (user and system
time of the client process, the daemon's own CPU left out), its p50, beside
the wall p50. Tasks, interleaved round by round: a raw blocking TCP round
trip of 16 KiB (a lookup's tokens) to an echo child (``benchmarks.lookup``'s
baseline), and ``ns.lookup`` of a cached 4,096-token prefix over shm and tcp
against a ``kvstore serve`` child. ``cpu_x_raw``: a call's CPU p50 over the
raw round trip's.

``--pin CPU`` runs this process and its children on that one CPU
(``sched_setaffinity``): no cross-CPU wake-up, each switch a cold cache.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import base_parser, print_table, write_json
from benchmarks.lookup import PROMPT_TOKENS, EchoClient, filled
from kvstore.demo.daemon_process import DaemonProc

RAW = f"raw round trip ({PROMPT_TOKENS * 4} B)"


def timed(tasks: dict, rounds: int, calls: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(cpu seconds, wall seconds) of every call of each task."""
    cpu: dict[str, list[float]] = {name: [] for name in tasks}
    wall: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            fn()  # warm
            c, w = cpu[name], wall[name]
            for _ in range(calls):
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                w.append(time.perf_counter() - w0)
                c.append(time.process_time() - c0)
    return {name: (np.array(cpu[name]), np.array(wall[name])) for name in tasks}


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pin", type=int, default=None, metavar="CPU",
                        help="run on this one CPU (children too)")
    args = parser.parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    closers: list = []
    try:
        echo = EchoClient()
        closers.append(echo.close)
        tasks = {RAW: echo.roundtrip(PROMPT_TOKENS * 4)}
        folder = tempfile.mkdtemp(prefix="kvstore-bench-lookup-cpu-")
        daemon = DaemonProc(["--cpu-bytes", "256MiB", "--ssd-bytes", "0", "--log-level",
                             "warning", "--listen", f"shm://{folder}/kv.sock",
                             "--listen", "tcp://127.0.0.1:0"])
        closers.append(daemon.terminate)
        for carrier in ("shm", "tcp"):
            ns, batches = filled(daemon.url(carrier), carrier, closers, 1)
            probe = batches[0][0]
            if ns.lookup(probe) != PROMPT_TOKENS:
                raise AssertionError("the prompt is not cached")
            tasks[f"{carrier} ns.lookup"] = (lambda ns=ns, probe=probe: ns.lookup(probe))
        samples = timed(tasks, args.rounds, args.calls)
    finally:
        for close in reversed(closers):
            close()
    base = float(np.median(samples[RAW][0]))
    rows = []
    for name, (cpu, wall) in samples.items():
        rows.append({"task": name, "cpu_p50_us": float(np.median(cpu)) * 1e6,
                     "cpu_mean_us": float(cpu.mean()) * 1e6,
                     "wall_p50_us": float(np.median(wall)) * 1e6,
                     "cpu_x_raw": float(np.median(cpu)) / base if base else float("nan")})
    load = os.getloadavg()
    pinned = f"pinned to CPU {args.pin}" if args.pin is not None else "not pinned"
    print_table(rows, ["task", "cpu_p50_us", "cpu_mean_us", "wall_p50_us", "cpu_x_raw"],
                title=f"the client's CPU per call ({pinned}; load average {load[0]:.2f})")
    if args.json:
        write_json(args.json, "lookup_cpu", rows, load_average=load, pin=args.pin,
                   rounds=args.rounds, calls=args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
