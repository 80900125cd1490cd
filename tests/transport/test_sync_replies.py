"""The sync client's checks on what comes back, against a peer the test writes by hand.

A ``SyncConnection`` whose daemon is the other end of a ``socketpair``: the
test queues the bytes the "daemon" answers before the request is made (no
thread, no waiting). A reply to another request id, a header that is not
msgpack or not a map, a header longer than the limit, an error reply: each
is refused with a clear error and the connection dropped where its stream
position is lost; replies that arrive together, or larger than the
read-ahead, are read right; deadlines hold on the blocking socket.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from kvstore.errors import InvalidArgument, ProtocolError, Timeout, TooLarge, Unavailable
from kvstore.transport.framing import PREFIX, pack_header, unpack_header
from kvstore.transport.limits import Limits
from kvstore.transport.messages import Op, parse_request
from kvstore.transport.sync_channel import WAIT_QUANTUM, BlockingChannel
from kvstore.transport.sync_connection import SyncConnection
from kvstore.transport.urls import parse_url
from kvstore.transport.wire_client import WireOps

pytestmark = pytest.mark.unit

NS = bytes(range(16))


class PairConnection(SyncConnection):
    """A ``SyncConnection`` to the test's end of a socket pair."""

    def __init__(self, sock: socket.socket, receive_fds: bool = False, **kwargs):
        super().__init__(parse_url("tcp://127.0.0.1:9"), **kwargs)
        self._sock, self._receive_fds = sock, receive_fds

    async def _open(self, wait: float) -> BlockingChannel:
        return BlockingChannel(self._sock, receive_fds=self._receive_fds)


class Peer:
    """The daemon's end: queues replies, reads the requests that came."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(10)

    def reply(self, request_id: int, **fields) -> None:
        self.send(pack_header({"id": request_id, "status": 0, "result": {}, **fields}))

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def request(self):
        """The next request the client sent, as the daemon parses it."""
        length = PREFIX.unpack(self._exact(4))[0]
        req = parse_request(unpack_header(self._exact(length)))
        for size in req.sizes:
            self._exact(size)
        return req

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "the client closed"
            out += chunk
        return out


@pytest.fixture
def pair():
    """A connected ``PairConnection`` (hello answered) and its ``Peer``."""
    client_sock, peer_sock = socket.socketpair()
    for sock in (client_sock, peer_sock):  # room for the replies queued ahead
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    peer = Peer(peer_sock)
    conn = PairConnection(client_sock, timeout=5)
    peer.reply(1, result={"version": 1})  # the hello
    yield conn, peer
    conn.closed = True
    if conn.channel is not None:
        conn.channel.close()
    peer_sock.close()


def connect(conn: PairConnection, peer: Peer) -> None:
    """The hello (id 1) and a ping (id 2), answered."""
    peer.reply(2)
    conn.call(Op.PING)
    assert peer.request().op == Op.HELLO
    assert peer.request().op == Op.PING


def test_a_lookup_round_trip(pair):
    conn, peer = pair
    connect(conn, peer)
    ops = WireOps(conn)
    tokens = np.arange(4096, dtype=np.uint32)
    peer.reply(3, result={"tokens": 4096})
    assert ops.lookup_now(conn.call, NS, tokens, b"x") == 4096
    req = peer.request()
    assert (req.op, req.id, req.ns) == (Op.LOOKUP, 3, NS)
    assert req.args == {"tokens": tokens.tobytes(), "extra": b"x"}


def test_a_reply_to_another_request_is_refused(pair):
    conn, peer = pair
    connect(conn, peer)
    peer.reply(99, result={"tokens": 16})
    with pytest.raises(ProtocolError, match="reply 99 to request 3"):
        conn.call(Op.LOOKUP, NS, {"tokens": b"\x00" * 64})
    assert conn.channel is None  # the stream is lost: dropped


@pytest.mark.parametrize("raw,match", [
    (b"\xc1\xc1\xc1", "malformed header"),  # not msgpack
    (b"\x93\x01\x02\x03", "must be a map"),  # an array
    (b"\x82\xa2id\x03\xa6status\xa2no", "status"),  # status not an int
    (b"\x83\xa2id\x03\xa6status\x00\xa6result\x01", "result must be a map"),
    (b"\x82\xa2id\xa1x\xa6status\x00", "id must be"),
])
def test_a_garbage_header_is_a_protocol_error(pair, raw, match):
    conn, peer = pair
    connect(conn, peer)
    peer.send(PREFIX.pack(len(raw)) + raw)
    with pytest.raises(ProtocolError, match=match):
        conn.call(Op.PING)
    assert conn.channel is None


def test_a_header_longer_than_the_limit_is_refused_before_it_is_read(pair):
    conn, peer = pair
    connect(conn, peer)
    peer.send(PREFIX.pack(Limits().max_header_bytes + 1))  # the length alone
    with pytest.raises(TooLarge):
        conn.call(Op.PING)
    assert conn.channel is None


def test_an_error_reply_raises_its_error_and_keeps_the_connection(pair):
    conn, peer = pair
    connect(conn, peer)
    peer.send(pack_header({"id": 3, "status": int(InvalidArgument.code), "error": "bad tokens"}))
    with pytest.raises(InvalidArgument, match="bad tokens"):
        conn.call(Op.LOOKUP, NS, {"tokens": b"\x00" * 4})
    assert conn.channel is not None
    peer.reply(4)
    conn.call(Op.PING)


def test_a_reply_with_an_unexpected_payload_is_refused(pair):
    conn, peer = pair
    connect(conn, peer)
    peer.send(pack_header({"id": 3, "status": 0, "result": {}, "sizes": [8]}) + b"\x00" * 8)
    with pytest.raises(ProtocolError, match="unexpected payload"):
        conn.call(Op.PING)
    assert conn.channel is None


def test_replies_that_arrive_together_are_read_one_by_one(pair):
    """The second reply waits in the read-ahead; the next call reads it without a recv."""
    conn, peer = pair
    connect(conn, peer)
    peer.send(pack_header({"id": 3, "status": 0, "result": {"n": 3}})
              + pack_header({"id": 4, "status": 0, "result": {"n": 4}}))
    assert conn.call(Op.PING).result == {"n": 3}
    assert conn.call(Op.PING).result == {"n": 4}


def test_a_header_larger_than_the_read_ahead(pair):
    conn, peer = pair
    connect(conn, peer)
    big = "x" * (200 << 10)
    peer.reply(3, result={"big": big})
    peer.reply(4, result={"after": 1})
    assert conn.call(Op.PING).result == {"big": big}
    assert conn.call(Op.PING).result == {"after": 1}


def test_a_daemon_that_closes_mid_header(pair):
    conn, peer = pair
    connect(conn, peer)
    peer.send(PREFIX.pack(100) + b"\x80")
    peer.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(Unavailable, match="middle of a frame"):
        conn.call(Op.PING)


def test_a_short_deadline_on_the_blocking_socket(pair):
    """A silent daemon: ``Timeout`` close to the request's own timeout (the kernel's wait
    is cut to the deadline), and the next connection's requests wait the full quantum."""
    conn, peer = pair
    connect(conn, peer)
    t0 = time.monotonic()
    with pytest.raises(Timeout, match="no reply within"):
        conn.call(Op.PING, timeout=0.2)
    took = time.monotonic() - t0
    assert took >= 0.2
    assert took < 0.2 + WAIT_QUANTUM  # not a whole quantum (nor the 5 s timeout) later
    assert conn.channel is None  # dropped: the reply may still come


def test_a_long_request_after_a_short_one_waits_its_whole_deadline():
    """A short deadline lowers the socket's wait; the next request raises it again."""
    a, b = socket.socketpair()
    try:
        channel = BlockingChannel(a)
        channel.deadline = time.monotonic() + 0.05
        channel._arm()
        assert channel._wait_s <= 0.05
        channel.deadline = time.monotonic() + 30
        channel._arm()
        assert channel._wait_s == WAIT_QUANTUM
    finally:
        a.close()
        b.close()


def test_shm_descriptors_come_with_the_hello_only():
    """The arena's descriptor arrives with the hello reply and is taken; a descriptor
    sent after it is not held by the client (the kernel closes it)."""
    client_sock, peer_sock = socket.socketpair()
    conn = PairConnection(client_sock, receive_fds=True, timeout=5)
    read_end, write_end = os.pipe()
    try:
        socket.send_fds(peer_sock, [pack_header({"id": 1, "status": 0, "result": {}})], [read_end])
        Peer(peer_sock).reply(2)
        conn.call(Op.PING)  # the hello, then the ping
        fds = conn.channel.take_fds()
        assert len(fds) == 1 and os.path.sameopenfile(fds[0], read_end)
        os.close(fds[0])
        held = len(os.listdir("/proc/self/fd"))
        socket.send_fds(peer_sock, [pack_header({"id": 3, "status": 0, "result": {"n": 3}})],
                        [write_end])
        assert conn.call(Op.PING).result == {"n": 3}
        assert conn.channel.received_fds == []
        assert len(os.listdir("/proc/self/fd")) == held  # no new descriptor in this process
    finally:
        conn.closed = True
        conn.channel.close()
        peer_sock.close()
        os.close(read_end)
        os.close(write_end)
