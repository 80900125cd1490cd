"""Lookup latency through the public API, beside a raw loopback round trip (one run).

``python -m benchmarks.lookup [--rounds 7] [--calls 200] [--json PATH]``

* baseline: a blocking TCP echo between two Python processes on loopback (a
  child process answers 8 bytes to each request), with a tiny request, a
  request as large as one lookup's tokens and one as large as lookup_many's
  (64 x 16 KiB: 1 MiB);
* ``ns.lookup`` of a cached 4,096-token prefix (``kvstore.client``) over shm
  and tcp against a ``kvstore serve`` child process, p50 and p99;
* ``ns.lookup_many`` of 64 such requests (64 cached prompts) in one call:
  ``ns.lookup_many(64)`` asks about the same 64 prompts every call (a
  scheduler's steps: after the first call they cross the wire as 16-byte
  digests, ``transport.prompt_memo``); ``ns.lookup_many(64) new prompts``
  rotates through ``ROTATE`` distinct cached batches, more than the
  connection's prompt memo holds (``max_memo_tokens``, 1 Mi tokens = 4
  batches), so every call sends all 1 MiB of tokens (and hashes them);
  the rows ending in ``memo off`` ask the same of a second daemon, started
  with ``KVSTORE_MAX_MEMO_TOKENS=0``: the plain request, every token every
  call (lookup_many before the memo), the baselines of the memo's rows.

Rounds interleave the tasks (each round runs every task ``--calls`` times) so
the machine's load swings hit all of them alike; p50/p99 are over every call.
Ratios: lookup p50 / the fastest small raw round trip's p50 (8 B, 1 KiB or
16 KiB, whichever was fastest in the run; target <= 8) and
lookup_many(64) p50 / lookup p50 (target <= 3); ``x_raw_same_bytes``: each
kvstore call against the raw round trip that carries the same token bytes
(what the wire alone costs: 64 prompts of 4,096 tokens are 1 MiB to send,
their 64 digests 1 KiB).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import base_parser, print_table, write_json
from benchmarks.transport_baselines import accept_one, recv_exact, start_child
from kvstore.client import KVClient
from kvstore.demo.daemon_process import DaemonProc
from kvstore.layout import KVLayout

PROMPT_TOKENS = 4096
BATCH = 64
DIGEST_BYTES = 16
ROTATE = 6  # distinct batches of the "new prompts" row: 6 x 256 Ki tokens > the 1 Mi-token memo
LAYOUT = KVLayout("bench-lookup", 1, 1, 8, "float16", 256)  # lookups do not depend on block size


# -- the baseline: a blocking socket echo in a child process ----------------------------
def echo_server() -> None:
    """Answer 8 bytes to each request (a 4-byte length, then that many bytes)."""
    conn = accept_one()
    head = memoryview(bytearray(4))
    body = memoryview(bytearray(1 << 20))
    try:
        while True:
            recv_exact(conn, head)
            recv_exact(conn, body[: int.from_bytes(head, "big")])
            conn.sendall(b"\x00" * 8)
    except ConnectionError:
        pass


class EchoClient:
    def __init__(self):
        self.proc, port = start_child(["benchmarks.lookup", "--echo-server"], "echo server")
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ack = memoryview(bytearray(8))

    def roundtrip(self, nbytes: int):
        msg = nbytes.to_bytes(4, "big") + b"\x01" * nbytes

        def call() -> None:
            self.sock.sendall(msg)
            recv_exact(self.sock, self.ack)

        return call

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


# -- kvstore through the public API ---------------------------------------------------
def prompts(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1 << 30, PROMPT_TOKENS, dtype=np.uint32) for _ in range(BATCH)]


def filled(url: str, carrier: str, closers: list, nbatches: int):
    """A strict client's namespace at ``url`` and ``nbatches`` batches of cached prompts."""
    client = KVClient.connect(url, strict=True, timeout=60)
    closers.append(client.close)
    ns = client.namespace(LAYOUT)
    batches = [prompts(sum(carrier.encode()) + k) for k in range(nbatches)]
    block = np.zeros(ns.spec.block_bytes, dtype=np.uint8)
    nblocks = PROMPT_TOKENS // LAYOUT.block_tokens
    for toks in (t for batch in batches for t in batch):
        assert ns.put_blocks(toks, [block] * nblocks) == PROMPT_TOKENS
    return ns, batches


def kvstore_tasks(url: str, carrier: str, closers: list, memo: bool = True) -> dict:
    """The rows of one daemon: with its prompt memo, ``ns.lookup`` and both lookup_many
    rows; without (``memo`` False: a daemon with ``max_memo_tokens`` 0), the lookup_many
    rows alone, named "... memo off" (every prompt's tokens every call, as before the memo)."""
    ns, batches = filled(url, carrier, closers, ROTATE)
    reqs = batches[0]
    probe = reqs[0]
    assert ns.lookup(probe) == PROMPT_TOKENS
    tasks = {f"{carrier} ns.lookup": lambda: ns.lookup(probe)} if memo else {}
    if hasattr(ns, "lookup_many"):  # before the op existed: not measured
        off = "" if memo else " memo off"
        assert ns.lookup_many(reqs) == [PROMPT_TOKENS] * BATCH
        tasks[f"{carrier} ns.lookup_many({BATCH}){off}"] = lambda: ns.lookup_many(reqs)
        turn = itertools.cycle(batches[1:])  # the repeated batch aside: 5 x 256 Ki tokens

        def new_prompts():
            assert ns.lookup_many(next(turn)) == [PROMPT_TOKENS] * BATCH

        tasks[f"{carrier} ns.lookup_many({BATCH}) new prompts{off}"] = new_prompts
    return tasks


def timed(tasks: dict, rounds: int, calls: int) -> dict[str, np.ndarray]:
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    rng = np.random.default_rng(0)
    names = list(tasks)
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            fn, out = tasks[names[i]], samples[names[i]]
            fn()  # warm
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    return {name: np.array(v) for name, v in samples.items()}


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--carriers", default="shm,tcp")
    parser.add_argument("--no-memo-off", dest="memo_off", action="store_false",
                        help="leave out the rows of a second daemon without the prompt memo")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server()
        return 0
    carriers = args.carriers.split(",")
    closers: list = []
    try:
        echo = EchoClient()
        closers.append(echo.close)
        token_bytes = PROMPT_TOKENS * 4
        tasks = {"raw round trip (8 B)": echo.roundtrip(8),
                 f"raw round trip ({BATCH * DIGEST_BYTES} B)": echo.roundtrip(BATCH * DIGEST_BYTES),
                 f"raw round trip ({token_bytes} B)": echo.roundtrip(token_bytes),
                 f"raw round trip ({BATCH * token_bytes} B)": echo.roundtrip(BATCH * token_bytes)}
        folder = tempfile.mkdtemp(prefix="kvstore-bench-lookup-")
        daemon_args = ["--cpu-bytes", "256MiB", "--ssd-bytes", "0", "--log-level", "warning"]
        for carrier in carriers:
            daemon_args += ["--listen", f"shm://{folder}/kv.sock" if carrier == "shm"
                            else f"{carrier}://127.0.0.1:0"]
        daemon = DaemonProc(daemon_args)
        closers.append(daemon.terminate)
        for carrier in carriers:
            tasks.update(kvstore_tasks(daemon.url(carrier), carrier, closers))
        if args.memo_off:
            off_args = [a.replace("kv.sock", "off.sock") for a in daemon_args]
            plain = DaemonProc(off_args, env={"KVSTORE_MAX_MEMO_TOKENS": "0"})
            closers.append(plain.terminate)
            for carrier in carriers:
                tasks.update(kvstore_tasks(plain.url(carrier), carrier, closers, memo=False))
        samples = timed(tasks, args.rounds, args.calls)
    finally:
        for close in reversed(closers):
            close()
    # the baseline of x_raw_rtt: the fastest small raw round trip of the run (8 B, 1 KiB or
    # 16 KiB: on this VM any of them can come out slowest in a run; the fastest is the
    # strictest measure of what a round trip costs)
    small = [name for name in samples if name.startswith("raw round trip")
             and int(name.split("(")[1].split()[0]) <= PROMPT_TOKENS * 4]
    base = min(float(np.median(samples[name])) for name in small)
    token_bytes = PROMPT_TOKENS * 4
    rows = []
    for name, values in samples.items():
        p50 = float(np.median(values))
        row = {"task": name, "p50_us": p50 * 1e6, "p99_us": float(np.percentile(values, 99)) * 1e6,
               "x_raw_rtt": p50 / base}
        carrier = name.split()[0]
        single = samples.get(f"{carrier} ns.lookup")
        if "lookup_many" in name and single is not None:
            row["x_one_lookup"] = p50 / float(np.median(single))
        if carrier != "raw":  # against a raw round trip carrying the same token bytes
            same = ((BATCH * DIGEST_BYTES if name.endswith(f"({BATCH})") else BATCH * token_bytes)
                    if "lookup_many" in name else token_bytes)
            row["x_raw_same_bytes"] = p50 / float(np.median(samples[f"raw round trip ({same} B)"]))
        rows.append(row)
    load = os.getloadavg()
    print_table(rows, ["task", "p50_us", "p99_us", "x_raw_rtt", "x_one_lookup", "x_raw_same_bytes"],
                title=f"lookups of a cached {PROMPT_TOKENS}-token prefix "
                      f"(load average {load[0]:.2f}; targets: lookup <= 8x raw, "
                      f"lookup_many({BATCH}) <= 3x one lookup)")
    if args.json:
        write_json(args.json, "lookup", rows, load_average=load, rounds=args.rounds,
                   calls=args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
