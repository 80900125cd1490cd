"""SharedArena: one file under /dev/shm, mmapped, that colocated processes can map too.

The daemon creates the file with a unique name (``kvstore-<pid>-<random>``,
``O_CREAT | O_EXCL``, mode 0600 so only the daemon's user can map it), sizes it
to exactly the arena's capacity with ``ftruncate`` and maps it shared. A
client maps the same file by ``ArenaInfo.path`` (``attach``) and reads or
writes the slots a lease names; pages are shared, nothing is copied.

The file is removed on ``close`` and, as a safety net, when the object is
garbage collected or the interpreter exits (``weakref.finalize``). A process
killed with SIGKILL cannot remove it; ``sweep_stale`` removes files whose
owning pid no longer exists (the daemon calls it on start).
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import weakref
from pathlib import Path

import numpy as np

from kvstore.errors import InvalidArgument, StorageError
from kvstore.kernels import pinning

PREFIX = "kvstore-"
_NAME = re.compile(r"^kvstore-(\d+)-[0-9a-f]+$")


def _cleanup(mm: mmap.mmap, path: str, pin: int = 0) -> None:
    pinning.untrack(pin)  # unregistered from CUDA before the pages go
    try:
        mm.close()
    except BufferError:  # views still exported: the mapping dies with them
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SharedArena:
    """``size`` bytes of shared memory backed by a file in ``directory``."""

    def __init__(self, size: int, directory: str = "/dev/shm"):
        if size <= 0:
            raise InvalidArgument("arena size must be positive")
        self.size = size
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        self.path = str(Path(directory) / name)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create arena {self.path}: {exc}") from exc
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError as exc:
            os.close(fd)
            os.unlink(self.path)
            raise StorageError(f"cannot map arena {self.path}: {exc}") from exc
        os.close(fd)
        self.array = np.frombuffer(self._mm, dtype=np.uint8)
        self.view = memoryview(self._mm)
        # pinned for DMA once a CUDA engine in this process asks (kvstore.kernels.pinning)
        self._pin = pinning.track(self.array.ctypes.data, size)
        self._finalizer = weakref.finalize(self, _cleanup, self._mm, self.path, self._pin)

    def close(self) -> None:
        """Unmap and remove the file (idempotent)."""
        self.view.release()
        self.array = None
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class AttachedArena:
    """A client's mapping of an arena another process created (read/write)."""

    def __init__(self, path: str, size: int, writable: bool = True):
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._mm = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        self.size = size
        self.array = np.frombuffer(self._mm, dtype=np.uint8)
        self.view = memoryview(self._mm)
        self._pin = pinning.track(self.array.ctypes.data, size)

    def slot(self, offset: int, length: int) -> memoryview:
        return self.view[offset : offset + length]

    def close(self) -> None:
        pinning.untrack(self._pin)
        self.array = None
        self.view.release()
        try:
            self._mm.close()
        except BufferError:  # pragma: no cover - caller still holds a view
            pass


def attach(path: str, size: int, writable: bool = True) -> AttachedArena:
    return AttachedArena(path, size, writable)


def sweep_stale(directory: str = "/dev/shm") -> list[str]:
    """Remove arena files left by processes that no longer exist; returns their paths."""
    removed = []
    for entry in Path(directory).glob(f"{PREFIX}*"):
        match = _NAME.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
            removed.append(str(entry))
        except PermissionError:
            pass
    return removed
