"""The tcp carrier's listener (and the stream-socket listener the shm carrier builds on).

Connections are accepted with ``loop.sock_accept`` and each is served by the
dispatcher over a ``SocketChannel``: payloads go out of arena memory with
``sendmsg`` and come in with ``recv_into`` straight into arena slots.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from kvstore.transport.channel import SMALL_READ_AHEAD, SocketChannel
from kvstore.transport.session import Session
from kvstore.transport.urls import CarrierURL

log = logging.getLogger(__name__)
BACKLOG = 512
# The receive buffer of the daemon's tcp connections, set on the listening socket
# (inherited by each accepted one, and announced in the handshake's window scale).
# Autotuning starts small (tcp_rmem's default, 128 KiB) and grows on long streams,
# not on a request/reply pattern: a 1 MiB request (``lookup_many`` of 64 prompts)
# then crossed loopback in ~0.45 ms against ~0.15 ms with this buffer. The kernel
# caps it at ``net.core.rmem_max`` (and doubles it for its own bookkeeping).
RECV_BUFFER = 4 << 20


class StreamListener:
    """Accepts stream-socket connections and hands them to the server."""

    carrier = "stream"
    arena_access = False

    def __init__(self, server, url: CarrierURL):
        self.server = server
        self.requested = url
        self.sock: socket.socket | None = None
        self._task: asyncio.Task | None = None

    def _bind(self) -> socket.socket:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError  # pragma: no cover

    async def start(self) -> None:
        self.sock = self._bind()
        self.sock.listen(BACKLOG)
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())
        log.info("listening on %s", self.url)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: back off, keep listening
                log.warning("%s accept failed: %s", self.carrier, exc)
                await asyncio.sleep(0.1)
                continue
            if not self._admit(conn):
                conn.close()
                continue
            channel = self._channel(conn, loop)
            session = Session(self.carrier, peer=str(addr) or channel.peer,
                              arena_access=self.arena_access)
            channel.session = session
            self.server.spawn(self.server.dispatcher.serve(channel, session))

    def _admit(self, conn: socket.socket) -> bool:
        """Whether to serve an accepted connection (the shm carrier checks the peer's uid)."""
        return True

    def _channel(self, conn: socket.socket, loop) -> SocketChannel:
        return SocketChannel(conn, loop, SMALL_READ_AHEAD)  # grown after hello

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TcpListener(StreamListener):
    carrier = "tcp"

    def _bind(self) -> socket.socket:
        host, port = self.requested.host, self.requested.port
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        except OSError:  # pragma: no cover - refused: the kernel's autotuning, as before
            pass
        try:
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return str(CarrierURL("tcp", host=host, port=port))
