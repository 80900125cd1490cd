"""Bulk transfers: one blocking syscall loop on a worker thread instead of the event loop.

A ``SocketChannel`` hands a transfer of ``BULK_BYTES`` or more to one of
these workers with the socket switched to blocking mode (with a stall
timeout): ``sendmsg`` of the whole gather list, or ``recv_into`` /
``recvmsg_into`` of the whole destination. The GIL is released inside the
syscalls, and no event-loop iteration runs per "socket ready" event.

Workers are a bounded resource (``BULK_THREADS`` a process): when all are
busy, which means slow or stalled peers, a transfer takes the event-loop path
instead of queueing behind them.
"""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from kvstore.errors import Unavailable

BULK_THREADS = 16
try:
    IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
except (ValueError, OSError, AttributeError):  # pragma: no cover
    IOV_MAX = 16

_bulk_lock = threading.Lock()
_bulk_pool: tuple[int, ThreadPoolExecutor] | None = None
_bulk_busy = 0
_bulk_pid = os.getpid()


def take_slot() -> bool:
    """A worker for one bulk transfer, or False when all are busy.

    Busy workers mean slow or stalled peers: the next transfers take the
    event-loop path instead of queueing behind them, so a few clients that
    stop reading cannot starve the others.
    """
    global _bulk_busy, _bulk_pid
    with _bulk_lock:
        if _bulk_pid != os.getpid():  # a forked child starts with no transfers
            _bulk_busy, _bulk_pid = 0, os.getpid()
        if _bulk_busy >= BULK_THREADS:
            return False
        _bulk_busy += 1
        return True


def give_slot(_future=None) -> None:
    global _bulk_busy
    with _bulk_lock:
        _bulk_busy -= 1


def executor() -> ThreadPoolExecutor:
    """The process's pool of threads for bulk transfers (made again after a fork)."""
    global _bulk_pool
    with _bulk_lock:
        if _bulk_pool is None or _bulk_pool[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=BULK_THREADS, thread_name_prefix="kvstore-bulk")
            _bulk_pool = (os.getpid(), pool)
        return _bulk_pool[1]


def advance(bufs: list, i: int, sent: int) -> int:
    """Drop ``sent`` bytes from the front of ``bufs[i:]``; the index of the first unsent."""
    while sent:
        size = len(bufs[i])
        if sent >= size:
            sent -= size
            i += 1
        else:
            bufs[i] = bufs[i][sent:]
            sent = 0
    while i < len(bufs) and not len(bufs[i]):
        i += 1
    return i


def send_blocking(sock: socket.socket, bufs: list) -> None:
    i = 0
    try:
        while i < len(bufs):
            i = advance(bufs, i, sock.sendmsg(bufs[i : i + IOV_MAX]))
    except OSError as exc:
        raise Unavailable(f"send failed: {exc}") from exc


def recv_scatter_blocking(sock: socket.socket, views: list) -> None:
    """Fill every view in order (``recvmsg_into``: one call fills several)."""
    i = 0
    try:
        while i < len(views):
            n = sock.recvmsg_into(views[i : i + IOV_MAX])[0]
            if n == 0:
                raise Unavailable("connection closed in the middle of a payload")
            i = advance(views, i, n)
    except OSError as exc:
        raise Unavailable(f"receive failed: {exc}") from exc


def recv_blocking(sock: socket.socket, view: memoryview) -> None:
    pos = 0
    try:
        while pos < len(view):
            n = sock.recv_into(view[pos:])
            if n == 0:
                raise Unavailable("connection closed in the middle of a payload")
            pos += n
    except OSError as exc:
        raise Unavailable(f"receive failed: {exc}") from exc
