"""The one seam between the SSD tier and the operating system (LevelDB's ``Env`` idea).

Every file operation of the SSD tier goes through an ``SSDFileSystem``. Tests
(and the store's own tests) swap in a ``FaultyFileSystem`` that raises chosen
``OSError``s (ENOSPC, EIO) at chosen calls, to check that a full or failing
disk degrades the tier cleanly and never corrupts what was already durable.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass


class SSDFileSystem:
    """Plain POSIX file operations on file descriptors."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def pwritev(self, fd: int, buffers: list, offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def preadv(self, fd: int, buffers: list, offset: int) -> int:
        return os.preadv(fd, buffers, offset)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    # helpers built on the primitives above (so faults injected there apply)

    def pwritev_all(self, fd: int, buffers: list, offset: int) -> None:
        """Write every byte of ``buffers`` at ``offset`` (short writes continued)."""
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        total = sum(len(v) for v in views)
        done = 0
        while done < total:
            n = self.pwritev(fd, views, offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "pwritev wrote nothing")
            done += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def preadv_all(self, fd: int, buffers: list, offset: int) -> int:
        """Fill ``buffers`` from ``offset``; returns bytes read (less only at end of file)."""
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        total = sum(len(v) for v in views)
        done = 0
        while done < total:
            n = self.preadv(fd, views, offset + done)
            if n <= 0:
                break
            done += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]
        return done


@dataclass
class Fault:
    """Raise ``OSError(err)`` on calls of ``op`` after ``after`` matching calls, ``times`` times.

    ``times=None`` fails every call from then on. ``path`` (a substring)
    restricts path operations (open, unlink, rename, fsync_dir) to matching paths.
    """

    op: str
    err: int = errno.EIO
    after: int = 0
    times: int | None = 1
    path: str | None = None
    seen: int = 0
    fired: int = 0


class FaultyFileSystem(SSDFileSystem):
    """An SSDFileSystem whose operations fail (``inject``) or stall (``slow``) on demand (tests)."""

    OPS = (
        "open", "close", "pwritev", "preadv", "pread", "fsync", "fsync_dir", "truncate",
        "unlink", "rename", "listdir", "makedirs", "size",
    )

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._delays: dict[str, float] = {}
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.waiting: dict[str, int] = {}  # calls parked at a gate now, by operation
        self.calls: dict[str, int] = {}

    def inject(self, op: str, err: int = errno.EIO, after: int = 0, times: int | None = 1,
               path: str | None = None) -> Fault:
        if op not in self.OPS:
            raise ValueError(f"unknown operation {op!r}")
        fault = Fault(op, err, after, times, path)
        with self._lock:
            self._faults.append(fault)
        return fault

    def slow(self, op: str, seconds: float) -> None:
        """Make every later call of ``op`` take ``seconds`` longer (0: full speed again)."""
        if op not in self.OPS:
            raise ValueError(f"unknown operation {op!r}")
        with self._lock:
            self._delays[op] = seconds

    def hold(self, op: str) -> threading.Event:
        """Park every later call of ``op`` until the returned event is set (a stalled disk).

        Deterministic where ``slow`` is timed: a test holds the writer, checks
        what must keep working meanwhile (``waiting[op]`` counts parked calls),
        then sets the event.
        """
        if op not in self.OPS:
            raise ValueError(f"unknown operation {op!r}")
        gate = threading.Event()
        with self._lock:
            self._gates[op] = gate
        return gate

    def clear(self) -> None:
        """Remove every injected fault and delay, and open every gate."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            gates, self._gates = list(self._gates.values()), {}
        for gate in gates:
            gate.set()

    def _check(self, op: str, path: str | None = None) -> None:
        delay = self._delays.get(op)
        if delay:
            time.sleep(delay)
        gate = self._gates.get(op)
        if gate is not None and not gate.is_set():
            with self._lock:
                self.waiting[op] = self.waiting.get(op, 0) + 1
            gate.wait()
            with self._lock:
                self.waiting[op] -= 1
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            for f in self._faults:
                if f.op != op or (f.path is not None and (path is None or f.path not in path)):
                    continue
                f.seen += 1
                if f.seen > f.after and (f.times is None or f.fired < f.times):
                    f.fired += 1
                    raise OSError(f.err, f"injected {errno.errorcode.get(f.err, f.err)} in {op}")

    def makedirs(self, path):
        self._check("makedirs", path)
        return super().makedirs(path)

    def listdir(self, path):
        self._check("listdir", path)
        return super().listdir(path)

    def open(self, path, flags, mode=0o600):
        self._check("open", path)
        return super().open(path, flags, mode)

    def close(self, fd):
        self._check("close")
        return super().close(fd)

    def size(self, fd):
        self._check("size")
        return super().size(fd)

    def pwritev(self, fd, buffers, offset):
        self._check("pwritev")
        return super().pwritev(fd, buffers, offset)

    def preadv(self, fd, buffers, offset):
        self._check("preadv")
        return super().preadv(fd, buffers, offset)

    def pread(self, fd, length, offset):
        self._check("pread")
        return super().pread(fd, length, offset)

    def fsync(self, fd):
        self._check("fsync")
        return super().fsync(fd)

    def fsync_dir(self, path):
        self._check("fsync_dir", path)
        return super().fsync_dir(path)

    def truncate(self, fd, length):
        self._check("truncate")
        return super().truncate(fd, length)

    def unlink(self, path):
        self._check("unlink", path)
        return super().unlink(path)

    def rename(self, src, dst):
        self._check("rename", dst)
        return super().rename(src, dst)
