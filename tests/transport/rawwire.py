"""A raw, blocking speaker of the wire protocol for tests that misbehave on purpose."""

from __future__ import annotations

import socket
import struct

import msgpack

from kvstore.transport.messages import PROTOCOL_VERSION
from kvstore.transport.urls import parse_url


def frame_bytes(header, payloads=()) -> bytes:
    body = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">I", len(body)) + body + b"".join(bytes(p) for p in payloads)


class Raw:
    def __init__(self, url: str, timeout: float = 5.0):
        u = parse_url(url)
        if u.scheme == "shm":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr = u.path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = (u.host, u.port)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.next_id = 1

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # the daemon closed on us: allowed
            return False

    def request(self, op, ns=None, args=None, payloads=(), **extra) -> dict | None:
        header = {"op": op, "id": self.next_id, **extra}
        self.next_id += 1
        if ns is not None:
            header["ns"] = ns
        if args:
            header["args"] = args
        if payloads:
            header["sizes"] = [len(p) for p in payloads]
        self.send(frame_bytes(header, payloads))
        return self.reply()

    def _exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def reply(self) -> dict | None:
        """The next reply header (its payload read and dropped), or None on EOF."""
        prefix = self._exact(4)
        if prefix is None:
            return None
        (length,) = struct.unpack(">I", prefix)
        assert length < 1 << 24, "daemon sent an absurd header"
        header = msgpack.unpackb(self._exact(length), raw=False)
        assert isinstance(header, dict) and isinstance(header.get("status"), int), header
        header["_payload"] = [self._exact(size) for size in header.get("sizes", [])]
        return header

    def hello(self, token=None, tenant: str = "", version: int = PROTOCOL_VERSION) -> dict | None:
        args = {"version": version, "tenant": tenant}
        if token is not None:
            args["token"] = token
        return self.request("hello", args=args)

    def shutdown_write(self) -> None:
        """Send EOF (the daemon may have closed already: fine)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def closed(self) -> bool:
        """True when the daemon has closed the connection (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()
