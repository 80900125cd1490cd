"""ReadWatch: wait on the event loop until a socket is readable, its descriptor watched across waits.

``loop.sock_recv_into`` registers the descriptor with the loop for every wait
and unregisters it when the data came: two ``epoll_ctl`` calls (uvloop
queues them through io_uring), a closure and a future per request. A
daemon connection waits once per request, so that bookkeeping was a good
part of a small request's cost: measured on the dev machine with a uvloop
echo of 16 KiB requests, the server spent 13.5 µs a request with
``sock_recv_into`` and 10.4 µs with this watch with both processes on one
CPU, 57–65 µs against 45–47 µs on two.

The descriptor stays registered while waits keep coming. Between them (a
request being served) a readable socket (a pipelined request, or a hostile
peer's garbage) would make a level-triggered loop call back on every turn,
so the ``STALE_CALLS``-th callback in a row that finds nobody waiting
unregisters the descriptor (the first ones are usually stale: the loop
polled again before the woken reader ran), and the next wait registers it again: a connection whose
data nobody reads yet is not polled in vain.

One coroutine waits at a time (the channel's one reader). ``stop`` (before
the socket is closed or handed to a blocking worker thread) unregisters it
and fails a pending wait with ``Unavailable``.
"""

from __future__ import annotations

import asyncio

from kvstore.errors import Unavailable

STALE_CALLS = 3  # callbacks in a row with nobody waiting before the descriptor is unregistered


class ReadWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int):
        self.loop = loop
        self.fd = fd
        self._waiter: asyncio.Future | None = None
        self._watching = False
        self._idle_calls = 0  # callbacks in a row that found nobody waiting

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # Nobody is reading. The first calls are usually stale: the loop polled
            # again before the woken reader ran (once more per task between it and the
            # wait, e.g. ``wait_for``'s), and it has read the data by now. More in a
            # row mean data waits unread: stop watching until the next wait.
            self._idle_calls += 1
            if self._idle_calls >= STALE_CALLS:
                self._unregister()
            return
        self._waiter = None
        self._idle_calls = 0
        if not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the socket is readable (or the watch stops: ``Unavailable``)."""
        if self.fd < 0:
            raise Unavailable("channel closed")
        waiter = self._waiter = self.loop.create_future()
        self._idle_calls = 0
        if not self._watching:
            self.loop.add_reader(self.fd, self._on_readable)
            self._watching = True
        try:
            await waiter
        finally:
            if self._waiter is waiter:  # cancelled or timed out: no longer waiting
                self._waiter = None

    def _unregister(self) -> None:
        if self._watching:
            self._watching = False
            try:
                self.loop.remove_reader(self.fd)
            except (RuntimeError, ValueError, OSError):  # the loop is closed already
                pass

    def pause(self) -> None:
        """Unregister the descriptor (a blocking worker thread takes the socket for a while)."""
        self._unregister()

    def stop(self) -> None:
        """Unregister for good and fail a pending wait (call on the loop's thread, before the
        socket is closed: a closed descriptor's number may be reused by the next socket)."""
        self._unregister()
        self.fd = -1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(Unavailable("channel closed"))
