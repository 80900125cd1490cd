"""The shm carrier's listener: control messages over a Unix socket, data through the arena.

A session on this carrier is offered the CPU arena (its path and size in the
hello reply) and leases: the client maps the arena, asks for a write lease,
copies its blocks into the slots and commits; or asks for a read lease,
copies out and releases. No payload byte crosses the socket. When the
socket closes (the client exits or is killed), the dispatcher releases every
lease it held: an uncommitted write lease frees its slots.

The socket file is created with mode 0600 (the arena file is 0600 as well):
shm is for the operator's own trusted engines. A missing folder is created
with mode 0700 and removed again (when empty) on close. A stale socket file
(no one listening) is replaced; a live one is an error (another daemon serves
it). The file is removed when the listener closes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat

from kvstore.errors import InvalidArgument
from kvstore.transport.tcp import StreamListener
from kvstore.transport.urls import CarrierURL

log = logging.getLogger(__name__)


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidArgument(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise InvalidArgument(f"another daemon is listening on {path}")


class ShmListener(StreamListener):
    carrier = "shm"
    arena_access = True

    def _bind(self) -> socket.socket:
        path = os.path.abspath(self.requested.path)
        parent = os.path.dirname(path)
        self._made_dir = None
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self._made_dir = parent
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        self.path = self.bound_path = path
        return sock

    @property
    def url(self) -> str:
        return str(CarrierURL("shm", path=getattr(self, "bound_path", self.requested.path)))

    async def close(self) -> None:
        await super().close()
        path = getattr(self, "path", None)
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self.path = None
        if getattr(self, "_made_dir", None):
            try:
                os.rmdir(self._made_dir)  # only when empty
            except OSError:
                pass
            self._made_dir = None
