"""Baselines of the transport benchmark: memcpy, a raw socket, raw ucxx, Redis.

Each baseline moves the same bytes as the kvstore carriers (``count`` blocks
of ``block_bytes``) between the benchmark process and a server process, as
well as that transport can without a protocol on top:

* ``raw_socket``: a TCP loopback connection to a child process; GET = the
  server ``sendmsg``s all blocks, the client ``recv_into``s one preallocated
  buffer; PUT the reverse, then a 1-byte ack.
* ``raw_ucxx``: a ucxx endpoint to a child process; all block messages posted
  at once (sends from / receives into numpy buffers), an 8-byte command first.
* ``redis``: ``redis-server`` on loopback (``--save '' --appendonly no``),
  redis-py with hiredis, the batch pipelined (GET returns bytes objects).

Child servers: ``python -m benchmarks.transport_baselines socket|ucxx BLOCK_BYTES COUNT``
print ``ready PORT`` and serve one client.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import numpy as np

from kvstore.demo.daemon_process import ROOT

REQ = 4096  # bytes of a small request (the latency probes)


def blocks_of(block_bytes: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, block_bytes, dtype=np.uint8) for _ in range(count)]


# -- memcpy ---------------------------------------------------------------------
def memcpy_get(blocks: list[np.ndarray], dst: np.ndarray) -> None:
    size = len(blocks[0])
    for i, block in enumerate(blocks):
        np.copyto(dst[i * size : (i + 1) * size], block)


def memcpy_put(src: np.ndarray, blocks: list[np.ndarray]) -> None:
    size = len(blocks[0])
    for i, block in enumerate(blocks):
        np.copyto(block, src[i * size : (i + 1) * size])


# -- child servers ----------------------------------------------------------------
def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` (the raw-socket baselines' receive)."""
    pos = 0
    while pos < len(view):
        n = sock.recv_into(view[pos:])
        if not n:
            raise ConnectionError("peer closed")
        pos += n


def serve_socket(block_bytes: int, count: int) -> None:
    blocks = blocks_of(block_bytes, count)
    sink = memoryview(np.empty(block_bytes * count, dtype=np.uint8))
    req = memoryview(bytearray(REQ))
    conn = accept_one()
    cmd = bytearray(1)
    try:
        while True:
            recv_exact(conn, memoryview(cmd))
            if cmd == b"G":
                bufs = [memoryview(b) for b in blocks]
                while bufs:
                    sent = conn.sendmsg(bufs)
                    while sent and bufs:
                        if sent >= len(bufs[0]):
                            sent -= len(bufs.pop(0))
                        else:
                            bufs[0] = bufs[0][sent:]
                            sent = 0
            elif cmd == b"P":
                recv_exact(conn, sink)
                conn.sendall(b"k")
            elif cmd == b"L":
                recv_exact(conn, req)
                conn.sendall(b"\x00" * 8)
            else:
                break
    except ConnectionError:
        pass


class SocketClient:
    def __init__(self, block_bytes: int, count: int):
        self.proc, port = _child("socket", block_bytes, count)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.req = b"L" + b"\x01" * REQ
        self.ack = memoryview(bytearray(8))

    def get(self, dst: np.ndarray) -> None:
        self.sock.sendall(b"G")
        recv_exact(self.sock, memoryview(dst))

    def put(self, blocks: list[np.ndarray]) -> None:
        self.sock.sendall(b"P")
        self.sock.sendmsg([memoryview(b) for b in blocks])
        recv_exact(self.sock, self.ack[:1])

    def ping(self) -> None:
        self.sock.sendall(self.req)
        recv_exact(self.sock, self.ack)

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


def serve_ucxx(block_bytes: int, count: int) -> None:
    from kvstore.transport.ucx import import_ucxx

    ucxx = import_ucxx()
    blocks = blocks_of(block_bytes, count)
    sink = np.empty(block_bytes * count, dtype=np.uint8)
    done = asyncio.Event()

    async def handler(ep):
        cmd = np.empty(REQ, dtype=np.uint8)
        try:
            while True:
                await ep.recv(cmd)
                op = bytes(cmd[:1])
                if op == b"G":
                    await asyncio.gather(*(ep.send(b) for b in blocks))
                elif op == b"P":
                    await asyncio.gather(*(ep.recv(sink[i * block_bytes : (i + 1) * block_bytes])
                                           for i in range(count)))
                    await ep.send(np.zeros(8, dtype=np.uint8))
                elif op == b"L":
                    await ep.send(np.zeros(8, dtype=np.uint8))
                else:
                    break
        except Exception:
            pass
        done.set()

    async def main():
        listener = ucxx.create_listener(handler, 0)
        print("ready", listener.port, flush=True)
        await done.wait()
        listener.close()

    asyncio.run(main())
    os._exit(0)


class UcxxClient:
    """Raw ucxx, driven from the benchmark's own loop thread (like the kvstore client)."""

    def __init__(self, block_bytes: int, count: int, io):
        from kvstore.transport.ucx import import_ucxx

        self.ucxx = import_ucxx()
        self.io = io
        self.block_bytes, self.count = block_bytes, count
        self.proc, port = _child("ucxx", block_bytes, count)
        self.ep = io.run(self.ucxx.create_endpoint("127.0.0.1", port))
        self.ack = np.empty(8, dtype=np.uint8)

    def _cmd(self, op: bytes, size: int = 1) -> np.ndarray:
        return np.frombuffer(op + b"\x01" * (size - 1), dtype=np.uint8)

    def get(self, dst: np.ndarray) -> None:
        bb = self.block_bytes

        async def run():
            await self.ep.send(self._cmd(b"G"))
            await asyncio.gather(*(self.ep.recv(dst[i * bb : (i + 1) * bb]) for i in range(self.count)))

        self.io.run(run())

    def put(self, blocks: list[np.ndarray]) -> None:
        async def run():
            await asyncio.gather(self.ep.send(self._cmd(b"P")), *(self.ep.send(b) for b in blocks))
            await self.ep.recv(self.ack)

        self.io.run(run())

    def ping(self) -> None:
        async def run():
            await self.ep.send(self._cmd(b"L", REQ))
            await self.ep.recv(self.ack)

        self.io.run(run())

    def close(self) -> None:
        async def run():
            await self.ep.send(self._cmd(b"Q"))
            await self.ep.close()

        try:
            self.io.run(run(), 10)
        finally:
            self.proc.wait(10)


def _child(kind: str, block_bytes: int, count: int):
    return start_child(["benchmarks.transport_baselines", kind, str(block_bytes), str(count)],
                       f"{kind} baseline server")


def start_child(module_args: list[str], what: str) -> tuple[subprocess.Popen, int]:
    """``python -m MODULE_ARGS`` in a child process that prints ``ready PORT`` once it
    listens (``accept_one``); the process and its port."""
    proc = subprocess.Popen([sys.executable, "-m", *module_args], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        proc.kill()
        raise RuntimeError(f"{what} did not start")
    return proc, int(line[1])


def accept_one() -> socket.socket:
    """In a baseline child: listen on a loopback port, say ``ready PORT``, and return the
    one connection accepted (TCP_NODELAY)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    print("ready", lsock.getsockname()[1], flush=True)
    conn, _ = lsock.accept()
    lsock.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


# -- redis ------------------------------------------------------------------------
class RedisClient:
    def __init__(self, block_bytes: int, count: int):
        from benchmarks.redis_server import RedisServer

        self.server = RedisServer()
        self.r = self.server.client()
        self.keys = [f"kv:{i}" for i in range(count)]
        self.probe = b"k" * REQ
        self.put(blocks_of(block_bytes, count))
        self.r.set(self.probe, b"1")

    def get(self, dst=None) -> list[bytes]:
        pipe = self.r.pipeline(transaction=False)
        for key in self.keys:
            pipe.get(key)
        return pipe.execute()

    def put(self, blocks) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key, block in zip(self.keys, blocks):
            pipe.set(key, memoryview(block))
        pipe.execute()

    def ping(self) -> None:
        self.r.exists(self.probe)

    def close(self) -> None:
        self.r.close()
        self.server.close()


def hiredis_in_use() -> bool:
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover
        return False
    return bool(HIREDIS_AVAILABLE)


def _main(argv: list[str]) -> None:
    kind, block_bytes, count = argv[0], int(argv[1]), int(argv[2])
    if kind == "socket":
        serve_socket(block_bytes, count)
    else:
        serve_ucxx(block_bytes, count)


if __name__ == "__main__":
    _main(sys.argv[1:])
