"""The ucx carrier's event-fd progress (transport/ucx_progress.py): idle, memory-safe, one loop.

ucx tests are integration tests (a ucx worker costs ~0.5 s to start and stop).
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from benchmarks.proc_cpu import CpuWindow
from kvstore.transport.io_thread import IOThread
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.transport.conftest import HAVE_UCX, spec_of, tokens_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not HAVE_UCX, reason="ucxx is not installed")]

IDLE_WINDOW_S = 1.5
IDLE_BOUND = 0.25  # cores; ucxx's own progress spun at 0.7-0.9 of a core here


@pytest.fixture
def ucx_daemon(store):
    srv = ServerThread(store, ["ucx://127.0.0.1:0"]).start()
    yield srv
    srv.stop()


def test_an_idle_ucx_client_and_daemon_do_not_spin(ucx_daemon):
    """Daemon and client in this process, connected and silent: CPU time from /proc, not speed."""
    client = RemoteStore.connect(ucx_daemon.urls[0], strict=True, timeout=30)
    try:
        _idle_then_lookup(client)
    finally:
        client.close()


def _idle_then_lookup(client: RemoteStore) -> None:
    spec = spec_of()
    ns = client.register(spec)
    tokens = tokens_for(1, 4)
    client.put(ns, tokens, [np.full(spec.block_bytes, 7, np.uint8)] * 4)
    assert client.lookup(ns, tokens) == len(tokens)
    window = CpuWindow(pid=os.getpid()).start()
    time.sleep(IDLE_WINDOW_S)  # the idle window is what this test measures
    share = window.share()
    print(f"idle ucx daemon + client: {share:.3f} of a core over {IDLE_WINDOW_S} s")
    assert share < IDLE_BOUND, f"idle ucx connection costs {share:.2f} of a core"
    assert client.lookup(ns, tokens) == len(tokens)  # and it still answers after the idle


def test_a_cancelled_receive_keeps_its_buffer_until_ucx_is_done(ucx_daemon):
    """A waiter cancelled mid-receive must not free memory UCX may still write into."""
    from kvstore.transport.ucx import open_ucx_channel
    from kvstore.transport.urls import parse_url

    async def run():
        channel = await open_ucx_channel(parse_url(ucx_daemon.urls[0]), 10.0)
        worker = channel.worker
        buf = np.zeros(64, dtype=np.uint8)
        task = asyncio.ensure_future(channel.read_into(memoryview(buf)))
        await _until(lambda: len(worker.pending) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held = worker.pending
        assert len(held) == 1 and np.shares_memory(held[0].buffer.obj, buf), "buffer let go"
        channel.close()  # cancels the request in UCX; the next pass sees it complete
        await _until(lambda: not worker.pending)
        assert held[0].request.completed

    IOThread.get().run(run(), timeout=60)


def test_a_channel_is_used_only_on_its_own_loop(ucx_daemon):
    from kvstore.transport.ucx import open_ucx_channel
    from kvstore.transport.urls import parse_url

    io = IOThread.get()
    channel = io.run(open_ucx_channel(parse_url(ucx_daemon.urls[0]), 10.0), timeout=60)
    try:
        with pytest.raises(RuntimeError, match="event loop that opened it"):
            asyncio.run(channel.send({"op": "ping", "id": 1}))
    finally:
        channel.close()  # from this thread: handed to the I/O loop
    assert _wait_on(io, lambda: channel.ep._ep is None), "the endpoint was not aborted"


def test_a_closed_loop_tears_its_worker_down(ucx_daemon):
    """asyncio.run's loop closes: its endpoints are aborted and nothing is left pending."""
    from kvstore.transport.ucx import open_ucx_channel
    from kvstore.transport.ucx_progress import LoopWorker
    from kvstore.transport.urls import parse_url

    seen = {}

    async def run():
        channel = await open_ucx_channel(parse_url(ucx_daemon.urls[0]), 10.0)
        seen["worker"], seen["channel"] = channel.worker, channel
        asyncio.ensure_future(channel.read_into(memoryview(np.zeros(8, np.uint8))))
        await _until(lambda: len(channel.worker.pending) == 1)

    asyncio.run(run())
    worker = seen["worker"]
    assert worker.closed and not worker.pending
    assert seen["channel"].ep._ep is None
    assert worker.loop not in LoopWorker._registry


def test_hasty_connects_leave_no_handshake_behind(ucx_daemon):
    """Callers giving up within milliseconds: handshakes finish on their own, then go."""
    from kvstore.errors import Unavailable
    from kvstore.transport.ucx import open_ucx_channel
    from kvstore.transport.urls import parse_url

    url = parse_url(ucx_daemon.urls[0])

    async def run():
        worker = None
        for timeout in (0.0005, 0.001, 0.002, 0.005, 0.01) * 3:
            try:
                channel = await open_ucx_channel(url, timeout)
            except Unavailable:
                continue
            worker = channel.worker
            channel.close()
        channel = await open_ucx_channel(url, 10.0)  # a patient one still gets through
        worker = channel.worker
        channel.close()
        await _until(lambda: not worker.endpoints and not worker.pending, timeout=30)

    IOThread.get().run(run(), timeout=90)


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _wait_on(io: IOThread, predicate) -> bool:
    async def check():
        await _until(predicate)
        return True

    return io.run(check(), timeout=30)
