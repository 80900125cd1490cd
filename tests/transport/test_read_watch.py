"""ReadWatch: waits for a readable socket with the descriptor kept registered across waits."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kvstore.errors import Unavailable
from kvstore.transport.read_watch import ReadWatch

pytestmark = pytest.mark.unit

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is a dependency
    uvloop = None


def run(kind: str, coro_fn):
    if kind == "uvloop":
        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_waits_until_data_then_stays_registered(kind, pair):
    a, b = pair

    async def main():
        loop = asyncio.get_running_loop()
        watch = ReadWatch(loop, a.fileno())
        loop.call_later(0.01, b.send, b"x")
        await asyncio.wait_for(watch.wait(), 10)
        assert a.recv(1) == b"x"
        assert watch._watching  # kept for the next wait: no epoll_ctl per request
        loop.call_later(0.01, b.send, b"y")
        await asyncio.wait_for(watch.wait(), 10)
        assert a.recv(1) == b"y"

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_unread_data_with_nobody_waiting_unregisters(kind, pair):
    """A peer that sends while its request is being served must not make the loop spin."""
    a, b = pair

    async def main():
        loop = asyncio.get_running_loop()
        watch = ReadWatch(loop, a.fileno())
        b.send(b"x")
        await asyncio.wait_for(watch.wait(), 10)
        b.send(b"more")  # still unread, nobody waits
        for _ in range(10):
            await asyncio.sleep(0)
            if not watch._watching:
                break
        assert not watch._watching
        await asyncio.wait_for(watch.wait(), 10)  # the next wait registers it again
        assert watch._watching

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_stop_fails_the_pending_wait_and_later_ones(kind, pair):
    a, b = pair

    async def main():
        loop = asyncio.get_running_loop()
        watch = ReadWatch(loop, a.fileno())
        loop.call_later(0.01, watch.stop)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(watch.wait(), 10)
        assert not watch._watching
        with pytest.raises(Unavailable):
            await watch.wait()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_cancelled_wait_leaves_no_waiter(kind, pair):
    a, b = pair

    async def main():
        loop = asyncio.get_running_loop()
        watch = ReadWatch(loop, a.fileno())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(watch.wait(), 0.01)
        assert watch._waiter is None
        watch.pause()
        assert not watch._watching
        loop.call_later(0.01, b.send, b"x")
        await asyncio.wait_for(watch.wait(), 10)
        assert a.recv(1) == b"x"

    run(kind, main)
