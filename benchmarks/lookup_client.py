"""The client's own CPU per synchronous lookup, with the daemon taken out (one run).

``python -m benchmarks.lookup_client [--rounds 7] [--calls 2000] [--json PATH]``

``benchmarks.lookup`` times a lookup end to end: the client, the daemon and
the kernel's wake-ups together. This one isolates the first: the public
``ns.lookup`` / ``ns.lookup_many`` of a ``KVClient`` over a real
``RemoteStore`` (tcp's ``SyncConnection`` and ``BlockingChannel``, every
check it makes), whose socket is one end of a local ``socketpair``. The
other end is this thread: before each call it writes the reply the daemon
would send (the right request id, so the client's checks pass), after it
reads the request away. Nothing waits, so a call's time is the client's CPU:
its Python between the call and the socket, plus one ``send`` and one
``recv`` syscall.

Baseline in the same run: the same two syscalls alone on the same socket pair
(``raw send+recv``: a request as large as the lookup's, 16 KiB of tokens, and
a prepared 8-byte answer). ``x_raw``: a call's p50 over the baseline's; the
``client_us`` column is the p50 less the baseline's: what the client layers
add per call.
"""

from __future__ import annotations

import socket
import sys
import time

import numpy as np

from benchmarks.common import base_parser, print_table, write_json
from kvstore.client import KVClient
from kvstore.client.codec import BlockCodec
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.transport.framing import PREFIX, pack_header, unpack_header
from kvstore.transport.sync_channel import BlockingChannel

PROMPT_TOKENS = 4096
BATCH = 64
LAYOUT = KVLayout("bench-lookup", 1, 1, 8, "float16", 256)


class FakeDaemon:
    """The peer end of the client's socket pair, answered on the caller's thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.next_id = 1
        self.buf = memoryview(bytearray(8 << 20))

    def answer(self, result: dict) -> None:
        """Queue the reply to the client's next request (sent before the request is)."""
        self.sock.sendall(pack_header({"id": self.next_id, "status": 0, "result": result}))
        self.next_id += 1

    def drain(self) -> None:
        """Read the request the client sent (whole frames), so its socket never fills."""
        self._exact(self.buf[:4])
        length = PREFIX.unpack(self.buf[:4])[0]
        self._exact(self.buf[:length])
        header = unpack_header(self.buf[:length])
        for size in header.get("sizes", ()):
            self._exact(self.buf[:size])

    def _exact(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            got += self.sock.recv_into(view[got:])


def connected_namespace(closers: list):
    """A ``KVClient`` namespace whose ``RemoteStore`` talks to a ``FakeDaemon``.

    The hello reply offers a prompt memo as a default daemon does, so
    ``lookup_many`` of prompts already asked about sends their digests.
    """
    client_sock, daemon_sock = socket.socketpair()
    for sock in (client_sock, daemon_sock):  # a first lookup_many's 1 MiB fits unread
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    daemon = FakeDaemon(daemon_sock)
    client = KVClient.connect("tcp://127.0.0.1:9", strict=True, timeout=60)
    closers += [client.close, daemon_sock.close]

    async def open_pair(wait):
        return BlockingChannel(client_sock)

    client.backend.conn._open = open_pair  # the daemon's end is this thread
    spec = NamespaceSpec(LAYOUT, "none", "", BlockCodec(LAYOUT, "none").payload_nbytes)
    daemon.answer({"version": 1, "limits": {"max_memo_tokens": 1 << 20}})  # hello
    daemon.answer({"ns": spec.fingerprint, "block_bytes": spec.block_bytes,
                   "block_tokens": LAYOUT.block_tokens})  # register
    ns = client.namespace(LAYOUT)
    daemon.drain()  # hello
    daemon.drain()  # register
    return ns, daemon


def raw_pair(closers: list):
    """The baseline: one 16 KiB ``send`` and one 8-byte ``recv`` on a socket pair."""
    a, b = socket.socketpair()
    closers += [a.close, b.close]
    msg = b"\x01" * (PROMPT_TOKENS * 4)
    ack = bytearray(8)
    sink = memoryview(bytearray(len(msg)))

    def call():
        a.send(msg)
        a.recv_into(ack)

    def before():
        b.send(b"\x00" * 8)

    def after():
        got = 0
        while got < len(sink):
            got += b.recv_into(sink[got:])

    return before, call, after


def timed(tasks: dict, rounds: int, calls: int) -> dict[str, np.ndarray]:
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, (before, call, after) in tasks.items():
            out = samples[name]
            for _ in range(calls):
                before()
                t0 = time.perf_counter()
                call()
                out.append(time.perf_counter() - t0)
                after()
    return {name: np.array(v) for name, v in samples.items()}


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    closers: list = []
    try:
        ns, daemon = connected_namespace(closers)
        probe = np.random.default_rng(0).integers(0, 1 << 30, PROMPT_TOKENS, dtype=np.uint32)
        batch = [probe] * BATCH

        def lookup():
            if ns.lookup(probe) != PROMPT_TOKENS:
                raise AssertionError("the prepared answer did not come back")

        def lookup_many():
            if ns.lookup_many(batch) != [PROMPT_TOKENS] * BATCH:
                raise AssertionError("the prepared answers did not come back")

        tasks = {
            "raw send+recv (16 KiB)": raw_pair(closers),
            "ns.lookup": (lambda: daemon.answer({"tokens": PROMPT_TOKENS}), lookup, daemon.drain),
            f"ns.lookup_many({BATCH})": (lambda: daemon.answer({"tokens": [PROMPT_TOKENS] * BATCH}),
                                         lookup_many, daemon.drain),
        }
        samples = timed(tasks, args.rounds, args.calls)
    finally:
        for close in reversed(closers):
            close()
    base = float(np.median(samples["raw send+recv (16 KiB)"]))
    rows = []
    for name, values in samples.items():
        p50 = float(np.median(values))
        rows.append({"task": name, "p50_us": p50 * 1e6,
                     "p99_us": float(np.percentile(values, 99)) * 1e6,
                     "client_us": (p50 - base) * 1e6, "x_raw": p50 / base})
    print_table(rows, ["task", "p50_us", "p99_us", "client_us", "x_raw"],
                title="the client's CPU per synchronous call (daemon replaced by prepared replies)")
    if args.json:
        write_json(args.json, "lookup_client", rows, rounds=args.rounds, calls=args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
