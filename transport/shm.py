"""The shm carrier's listener: control messages over a Unix socket, data through the arena.

A session on this carrier is handed its tenant's arena with the hello reply:
the descriptor of a memory file (``SCM_RIGHTS``), never a path, and only
that tenant's. The client maps it, asks for a write lease, copies its blocks
into the slots and commits; or asks for a read lease, copies out and
releases. No payload byte crosses the socket. When the socket closes (the
client exits or is killed), the dispatcher releases every lease it held: an
uncommitted write lease frees its slots.

Who may connect: the kernel's record of the peer's uid (``SO_PEERCRED``)
must be on the operator's allow-list (``shm_allow_uids``; default: the
daemon's own uid); anyone else is closed at accept. The socket file is 0600
and its folder must be the daemon's own: created 0700 when missing (and
removed again, when empty, on close), refused when another user owns it or
group/others may write it (``peer_credentials.check_private_dir``). A stale
socket file (no one listening) is replaced; a live one is an error (another
daemon serves it). The file is removed when the listener closes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat

from kvstore.errors import InvalidArgument, Unauthorized
from kvstore.transport.channel import SMALL_READ_AHEAD
from kvstore.transport.fd_channel import FdSendingChannel
from kvstore.transport.peer_credentials import UidAllowList, check_private_dir
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
        self._made_dir = parent if check_private_dir(parent) else None
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

    def _admit(self, conn: socket.socket) -> bool:
        allowed = getattr(self.server, "shm_allow", None) or UidAllowList()
        try:
            allowed.check(conn)
        except (Unauthorized, OSError) as exc:
            log.warning("shm connection refused: %s", exc)
            observer = self.server.dispatcher.observer
            if observer is not None:
                observer.refused(self.carrier, Unauthorized.code)
            return False
        return True

    def _channel(self, conn: socket.socket, loop):
        return FdSendingChannel(conn, loop, SMALL_READ_AHEAD)  # grown after hello

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
