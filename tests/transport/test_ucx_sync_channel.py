"""The synchronous client's ucx channel (transport/ucx_sync_channel.py).

The caller's thread progresses a ucx worker of its own: against a real
daemon it moves large payloads byte for byte and never starts the I/O
thread; against a scripted ucx peer (a ucxx listener on the I/O thread's
loop that answers what the test says) it keeps its deadline, notices a peer
that goes away, and refuses a reply that is garbage or longer than declared.
ucx tests are integration tests (a ucx worker costs ~0.5 s to start and stop).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kvstore.errors import ProtocolError, Timeout, Unavailable
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.transport.framing import PREFIX
from kvstore.transport.io_thread import IOThread
from kvstore.transport.limits import Limits
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from kvstore.transport.sync_connection import SyncConnection
from tests.transport.conftest import HAVE_UCX, tokens_for
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not HAVE_UCX, reason="ucxx is not installed")]

# 8 layers x 2 x 16 tokens x 8 heads x 128 x 2 bytes = 512 KiB blocks: rendezvous transfers
BIG = NamespaceSpec(KVLayout("big", num_layers=8, num_kv_heads=8, head_dim=128,
                             dtype="float16", block_tokens=16))


@pytest.fixture
def ucx_daemon(store):
    srv = ServerThread(store, ["ucx://127.0.0.1:0"]).start()
    yield srv
    srv.stop()


def _random_blocks(seed: int, n: int, nbytes: int) -> list[np.ndarray]:
    print(f"KVSTORE_TEST_SEED={seed}")
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, nbytes, dtype=np.uint8) for _ in range(n)]


def test_large_payloads_move_byte_exact_on_the_callers_thread(ucx_daemon):
    client = RemoteStore.connect(ucx_daemon.urls[0], strict=True, timeout=30)
    try:
        assert isinstance(client.conn, SyncConnection)
        ns = client.register(BIG)
        tokens = tokens_for(5, 12)
        blocks = _random_blocks(1234, 12, BIG.block_bytes)
        threads = {t.name for t in threading.enumerate()}
        assert client.put(ns, tokens, blocks) == len(tokens)
        n, got = client.get(ns, tokens)
        assert n == len(tokens)
        assert all(bytes(a) == bytes(b) for a, b in zip(got, blocks))
        out = np.zeros((12, BIG.block_bytes), np.uint8)
        n, buf = client.get_into(ns, tokens, lambda nbytes: out.reshape(-1)[:nbytes])
        assert n == len(tokens) and np.shares_memory(buf, out)
        assert all(bytes(out[i]) == bytes(blocks[i]) for i in range(12))
        assert client._io is None and {t.name for t in threading.enumerate()} == threads
    finally:
        client.close()


def test_a_stopped_daemon_fails_the_next_request_then_a_new_one_serves(store):
    srv = ServerThread(store, ["ucx://127.0.0.1:0"]).start()
    url = srv.urls[0]
    client = RemoteStore.connect(url, strict=True, timeout=5, retry_interval=0.05)
    try:
        ns = client.register(BIG)
        tokens = tokens_for(6, 2)
        client.put(ns, tokens, _random_blocks(7, 2, BIG.block_bytes))
        srv.stop()
        with pytest.raises(Unavailable):
            client.lookup(ns, tokens)
    finally:
        client.close()


# -- a scripted ucx peer ------------------------------------------------------------------
class ScriptedPeer:
    """A ucxx listener on the I/O thread's loop; each request header gets ``answer(channel)``."""

    def __init__(self, answer):
        self.answer = answer
        self.channels: list = []
        self.requests = 0
        self.io = IOThread.get()
        self.listener = self.io.run(self._listen(), timeout=30)
        self.url = f"ucx://127.0.0.1:{self.listener.port}"

    async def _listen(self):
        from kvstore.transport.ucx_progress import LoopWorker

        self.worker = LoopWorker.current()
        return self.worker.ctx.create_listener(self._serve, None)

    async def _serve(self, endpoint) -> None:
        from kvstore.transport.ucx import UcxChannel

        channel = UcxChannel(endpoint, self.worker)
        self.channels.append(channel)
        while await channel.read_header(Limits()) is not None:
            self.requests += 1
            if not await self.answer(channel):
                return

    def close(self) -> None:
        async def stop():
            for channel in self.channels:
                channel.close()
            self.listener.close()

        self.io.run(stop(), timeout=30)


@pytest.fixture
def peer():
    peers: list[ScriptedPeer] = []

    def make(answer) -> ScriptedPeer:
        peers.append(ScriptedPeer(answer))
        return peers[-1]

    yield make
    for p in peers:
        p.close()


async def _silent(channel) -> bool:
    return True  # read on, answer nothing


def test_a_silent_peer_times_out_within_the_deadline(peer):
    p = peer(_silent)
    client = RemoteStore.connect(p.url, strict=True, timeout=0.5, connect_timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            client.ping()
        assert time.monotonic() - t0 < 10  # bounded by the deadline, not hanging
        assert client.conn.channel is None  # dropped: its stream position is unknown
        assert p.requests == 1
    finally:
        client.close()


def test_a_peer_that_leaves_mid_request_fails_it_before_the_deadline(peer):
    async def leave(channel) -> bool:
        channel.close()
        return False

    p = peer(leave)
    client = RemoteStore.connect(p.url, strict=True, timeout=60, connect_timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            client.ping()
        assert time.monotonic() - t0 < 30  # told by UCX, not by the 60 s deadline
    finally:
        client.close()


def test_abort_ends_a_request_blocked_on_another_thread(peer):
    p = peer(_silent)
    client = RemoteStore.connect(p.url, strict=True, timeout=60, connect_timeout=5)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.ping()
        except BaseException as exc:  # reported below
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    wait_until(lambda: p.requests == 1, timeout=20)
    client.abort("node left the cluster")
    t.join(20)
    assert not t.is_alive()
    assert isinstance(outcome[0], Unavailable) and "node left the cluster" in str(outcome[0])


@pytest.mark.parametrize("reply", [
    PREFIX.pack(5) + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
    PREFIX.pack(20_000) + bytes(20_000),  # one message longer than the header receive
    PREFIX.pack(1 << 31),  # declares a header over the limits
], ids=["garbage", "longer-than-posted", "oversized-header"])
def test_a_bad_reply_is_refused_and_the_connection_dropped(peer, reply):
    async def answer(channel) -> bool:
        await channel._send(np.frombuffer(reply, np.uint8))
        return True

    p = peer(answer)
    client = RemoteStore.connect(p.url, strict=True, timeout=10, connect_timeout=5)
    try:
        with pytest.raises(ProtocolError) as info:
            client.ping()
        print(f"refused: {info.value!r}")
        assert client.conn.channel is None
    finally:
        client.close()


def test_a_forked_child_leaves_the_parents_ucx_connection_intact(ucx_daemon):
    """The child forgets the parent's channel without touching UCX (the parent's worker);
    UCX itself cannot connect from a child of fork, which the child is told clearly."""
    import os

    client = RemoteStore.connect(ucx_daemon.urls[0], strict=True, timeout=3, connect_timeout=3)
    try:
        ns = client.register(BIG)
        tokens = tokens_for(8, 2)
        client.put(ns, tokens, _random_blocks(9, 2, BIG.block_bytes))
        parent_channel = client.conn.channel
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answer through the pipe, never return into pytest
            code = 1
            try:
                try:
                    answer = f"hit {client.lookup(ns, tokens)}"
                except Unavailable as exc:
                    answer = f"unavailable {exc}"
                os.write(write_end, answer.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        print(f"child: {answer}")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert answer == f"hit {len(tokens)}" or answer.startswith("unavailable cannot reach")
        assert client.conn.channel is parent_channel  # the parent kept its connection
        assert client.lookup(ns, tokens) == len(tokens)
    finally:
        client.close()
