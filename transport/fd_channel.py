"""Channels of the shm control socket that carry file descriptors (``SCM_RIGHTS``).

The daemon hands a connection its tenant's arena as a descriptor attached to
the ``hello`` reply (``FdSendingChannel``: the session's ``pass_fds`` go out
with the next frame sent). The client receives with ``recvmsg`` and keeps
what arrived (``FdReceivingChannel.received_fds``); a descriptor that came
with anything but the hello reply is closed and refused. Nothing in the
filesystem names an arena, so a client can map only what its authenticated
peer gave it.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket

from kvstore.errors import Unavailable
from kvstore.transport.channel import SocketChannel

MAX_FDS = 4
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
# A client's send buffer on the shm control socket. A unix stream socket holds no more
# than its sender's buffer (208 KiB by default) in flight: a 1 MiB ``lookup_many``
# request (64 prompts of 4,096 tokens) then crossed in five turns of the client
# waiting and the daemon's loop waking; with room for it, in one send. The kernel caps
# it at ``net.core.wmem_max``.
CONTROL_SEND_BUFFER = 4 << 20


def widen_send_buffer(sock: socket.socket) -> None:
    """Give a client's shm control socket ``CONTROL_SEND_BUFFER`` (best effort)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CONTROL_SEND_BUFFER)
    except OSError:  # pragma: no cover - refused: the default, as before
        pass


class FdSendingChannel(SocketChannel):
    """The daemon's end: ``session.pass_fds`` ride along with the next frame sent."""

    session = None  # set by the listener

    async def send(self, header: dict, payloads=()) -> None:
        fds = self.session.pass_fds if self.session is not None else None
        if not fds:
            await super().send(header, payloads)
            return
        self.session.pass_fds = []
        from kvstore.transport.framing import pack_header

        data = pack_header(header)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        while True:
            try:
                sent = self.sock.sendmsg([data], anc)
                break
            except (BlockingIOError, InterruptedError):
                await self._writable()
            except OSError as exc:
                raise Unavailable(f"send failed: {exc}") from exc
        if sent < len(data):
            await self.send_buffers([memoryview(data)[sent:]])
        if payloads:  # pragma: no cover - the hello reply has none
            await self.send_buffers([memoryview(p) for p in payloads])


def recv_with_fds(sock: socket.socket, view: memoryview, fds_out: list[int]) -> int:
    """One ``recvmsg`` into ``view``; the descriptors it carried are appended to
    ``fds_out`` in arrival order (the asyncio and the blocking client channels)."""
    n, anc, _flags, _addr = sock.recvmsg_into([view], _FD_SPACE)
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            fds_out.extend(fds)
    return n


class FdReceivingChannel(SocketChannel):
    """The client's end: every receive is a ``recvmsg``; descriptors are kept in arrival order."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(sock, loop)
        self.received_fds: list[int] = []

    def _recv_once(self, view: memoryview) -> int:
        return recv_with_fds(self.sock, view, self.received_fds)

    def take_fds(self) -> list[int]:
        fds, self.received_fds = self.received_fds, []
        return fds

    def close(self, abort: bool = False) -> None:
        for fd in self.take_fds():
            try:
                os.close(fd)
            except OSError:
                pass
        super().close(abort)
