"""Each malformed, oversized or unauthorised request gets an error reply or a closed
connection, and the daemon keeps serving a good client (tcp and shm streams)."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from kvstore.errors import ErrorCode
from kvstore.transport.auth import TokenAuth
from kvstore.transport.limits import Limits
from kvstore.transport.server import ServerThread
from tests.transport.conftest import blocks_for, listen_url, spec_of, tokens_for
from tests.transport.rawwire import Raw, frame_bytes
from tests.waiting import wait_until


@pytest.fixture(params=["tcp", "shm"])
def stream_daemon(request, store, sockdir):
    limits = Limits(max_header_bytes=64 << 10, max_payload_bytes=8 << 20, max_segments=64,
                    max_tokens=4096, max_connections=64)
    auth = TokenAuth.from_text("good-token")
    srv = ServerThread(store, [listen_url(request.param, sockdir)], limits=limits, auth=auth).start()
    yield srv
    srv.stop()


@pytest.fixture
def good(stream_daemon):
    """A well-behaved client that must keep working whatever the others send."""
    from kvstore.transport.remote import RemoteStore

    client = RemoteStore.connect(stream_daemon.urls[0], token="good-token", strict=True, timeout=5)
    spec = spec_of()
    ns = client.register(spec)
    toks = tokens_for(1, 2)
    blocks = blocks_for(toks, spec)
    assert client.put(ns, toks, blocks) == 32

    def check():
        n, got = client.get(ns, toks)
        assert n == 32 and b"".join(bytes(g) for g in got) == b"".join(b.tobytes() for b in blocks)

    yield check
    client.close()


def raw(srv, hello=True, tenant="") -> Raw:
    r = Raw(srv.urls[0])
    if hello:
        assert r.hello(token="good-token", tenant=tenant)["status"] == 0
    return r


def registered(r: Raw, spec=None) -> bytes:
    reply = r.request("register", args={"spec": (spec or spec_of()).to_dict()})
    assert reply["status"] == 0, reply
    return reply["result"]["ns"]


def refused(reply, code: ErrorCode) -> None:
    assert reply is not None, "expected an error reply, the connection was closed"
    assert reply["status"] == code, reply


def test_random_bytes(stream_daemon, good):
    rng = np.random.default_rng(0)
    for size in (1, 3, 4, 5, 100, 4096, 70000):
        r = Raw(stream_daemon.urls[0])
        r.send(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        r.shutdown_write()
        reply = r.reply()
        assert reply is None or reply["status"] != 0
        r.close()
        good()


def test_truncated_frames(stream_daemon, good):
    whole = frame_bytes({"op": "hello", "id": 1, "args": {"version": 1, "token": "good-token"}})
    for cut in (1, 3, 4, 5, len(whole) // 2, len(whole) - 1):
        r = Raw(stream_daemon.urls[0])
        r.send(whole[:cut])
        r.shutdown_write()  # the daemon sees EOF mid-frame and closes
        assert r.reply() is None
        r.close()
        good()
    # a put whose payload stops short
    r = raw(stream_daemon)
    ns = registered(r)
    toks = tokens_for(3, 2)
    header = {"op": "put", "id": 9, "ns": ns, "args": {"tokens": toks.tobytes()},
              "sizes": [4096, 4096]}
    r.send(frame_bytes(header) + b"x" * 5000)
    r.shutdown_write()
    assert r.reply() is None
    r.close()
    good()


def test_huge_declared_lengths(stream_daemon, good, store):
    r = Raw(stream_daemon.urls[0])
    r.send(struct.pack(">I", 0xFFFFFFFF))  # refused before the header is allocated
    refused(r.reply(), ErrorCode.TOO_LARGE)
    assert r.closed()
    r = raw(stream_daemon)
    ns = registered(r)
    header = {"op": "put", "id": 2, "ns": ns, "args": {"tokens": tokens_for(1, 1).tobytes()},
              "sizes": [1 << 40]}
    r.send(frame_bytes(header))  # refused before any payload byte is read
    refused(r.reply(), ErrorCode.TOO_LARGE)
    assert r.closed()
    r = raw(stream_daemon)
    r.send(frame_bytes({"op": "ping", "id": 3, "sizes": [1] * 1000}))
    refused(r.reply(), ErrorCode.TOO_LARGE)
    r = raw(stream_daemon)
    ns = registered(r)
    reply = r.request("lookup", ns, {"tokens": np.zeros(5000, np.uint32).tobytes()})
    refused(reply, ErrorCode.TOO_LARGE)
    good()


def test_unknown_op_and_bad_args_keep_the_connection(stream_daemon, good):
    r = raw(stream_daemon)
    refused(r.request("frobnicate"), ErrorCode.PROTOCOL)
    ns = registered(r)
    refused(r.request("lookup", ns, {"tokens": b"abc"}), ErrorCode.INVALID_ARGUMENT)
    refused(r.request("lookup", ns, {"tokens": 17}), ErrorCode.INVALID_ARGUMENT)
    refused(r.request("lookup", ns, {"tokens": b"", "extra": "str"}), ErrorCode.INVALID_ARGUMENT)
    refused(r.request("register", args={"spec": {"layout": {"model_id": "x"}}}), ErrorCode.INVALID_ARGUMENT)
    refused(r.request("register", args={"spec": 5}), ErrorCode.INVALID_ARGUMENT)
    refused(r.request("release", args={"lease": 12345}), ErrorCode.NOT_FOUND)
    refused(r.request("release", args={"lease": -1}), ErrorCode.INVALID_ARGUMENT)
    refused(r.request("ping", payloads=[b"zzz"]), ErrorCode.INVALID_ARGUMENT)  # payload skipped
    refused(r.request("hello", args={"version": 1}), ErrorCode.INVALID_ARGUMENT)  # twice
    refused(r.request("lookup", b"\x00" * 16, {"tokens": b""}), ErrorCode.NOT_FOUND)
    assert r.request("ping")["status"] == 0
    good()


def test_malformed_headers_close(stream_daemon, good):
    bodies = [
        msgpack.packb(42),
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"op": 5, "id": 1}),
        msgpack.packb({"op": "ping", "id": -1}),
        msgpack.packb({"op": "ping", "id": 1, "sizes": "many"}),
        msgpack.packb({"op": "ping", "id": 1, "sizes": [-4]}),
        msgpack.packb({"op": "ping", "id": 1, "ns": b"short"}),
        msgpack.packb({"op": "ping", "id": 1, "args": [1]}),
        msgpack.packb({"op": "ping", "id": 1}) + b"trailing",
        msgpack.packb(msgpack.ExtType(5, b"xx")),
        b"\x91" * 5000 + b"\xc0",  # deep nesting
        b"\xc1",  # never used byte
        msgpack.packb({1: 2}),  # non-str keys
    ]
    for body in bodies:
        r = raw(stream_daemon)
        r.send(struct.pack(">I", len(body)) + body)
        reply = r.reply()
        assert reply is not None and reply["status"] in (ErrorCode.PROTOCOL, ErrorCode.TOO_LARGE)
        assert r.closed()
        good()


def test_hello_rules(stream_daemon, good):
    r = Raw(stream_daemon.urls[0])
    refused(r.request("ping"), ErrorCode.UNAUTHORIZED)  # before hello
    assert r.closed()
    r = Raw(stream_daemon.urls[0])
    refused(r.hello(token="good-token", version=99), ErrorCode.UNSUPPORTED_VERSION)
    assert r.closed()
    r = Raw(stream_daemon.urls[0])
    refused(r.hello(token="bad-token"), ErrorCode.UNAUTHORIZED)
    assert r.closed()
    r = Raw(stream_daemon.urls[0])
    refused(r.hello(), ErrorCode.UNAUTHORIZED)  # no token
    assert r.closed()
    r = Raw(stream_daemon.urls[0])
    refused(r.hello(token=b"\x00" * 10_000), ErrorCode.UNAUTHORIZED)
    good()


def test_wrong_tenant_and_layout(stream_daemon, good):
    alice = raw(stream_daemon, tenant="alice")
    bob = raw(stream_daemon, tenant="bob")
    ns_alice = registered(alice)
    refused(bob.request("lookup", ns_alice, {"tokens": b""}), ErrorCode.NOT_FOUND)
    refused(bob.request("register", args={"spec": spec_of(tenant="alice").to_dict()}),
            ErrorCode.UNAUTHORIZED)
    assert bob.closed()  # a tenant violation ends the connection
    spec = spec_of()
    toks = tokens_for(5, 2)
    payloads = [b"\x01" * (spec.block_bytes + 8)] * 2
    reply = alice.request("put", ns_alice, {"tokens": toks.tobytes()}, payloads=payloads)
    refused(reply, ErrorCode.LAYOUT_MISMATCH)
    payloads = [b"\x01" * spec.block_bytes] * 3  # three blocks for two blocks of tokens
    refused(alice.request("put", ns_alice, {"tokens": toks.tobytes()}, payloads=payloads),
            ErrorCode.INVALID_ARGUMENT)
    assert alice.request("lookup", ns_alice, {"tokens": toks.tobytes()})["result"]["tokens"] == 0
    good_blocks = [b.tobytes() for b in blocks_for(toks, spec)]
    reply = alice.request("put", ns_alice, {"tokens": toks.tobytes()}, payloads=good_blocks)
    assert reply["status"] == 0 and reply["result"]["tokens"] == 32
    good()


def test_leases_only_on_shm(stream_daemon, good, store):
    r = raw(stream_daemon)
    ns = registered(r)
    toks = tokens_for(1, 2).tobytes()
    reply = r.request("lease", ns, {"tokens": toks, "mode": "read"})
    if "tcp" in stream_daemon.urls[0]:
        refused(reply, ErrorCode.INVALID_ARGUMENT)
    else:
        assert reply["status"] == 0
        refused(r.request("commit", args={"lease": reply["result"]["lease"]}),
                ErrorCode.INVALID_ARGUMENT)  # a read lease cannot be committed
        refused(r.request("lease", ns, {"tokens": toks, "mode": "steal"}),
                ErrorCode.INVALID_ARGUMENT)
    r.close()
    good()


def test_connection_limit(store, sockdir):
    limits = Limits(max_connections=2)
    with ServerThread(store, [listen_url("tcp", sockdir)], limits=limits) as srv:
        a, b = raw(srv), raw(srv)
        c = Raw(srv.urls[0])  # max_connections is checked at hello (pre-hello: its own cap)
        refused(c.hello(token="good-token"), ErrorCode.UNAVAILABLE)
        assert c.closed()
        a.close()
        b.close()
        assert wait_until(lambda: srv.dispatcher.connections == 0)
        d = raw(srv)
        assert d.request("ping")["status"] == 0


def test_stalled_payload_is_dropped(stream_daemon, good, store, monkeypatch):
    """A peer that stops sending inside a frame loses the connection and its lease."""
    from kvstore.transport import channel

    monkeypatch.setattr(channel, "STALL_SECONDS", 0.5)
    r = raw(stream_daemon)
    ns = registered(r)
    spec = spec_of()
    toks = tokens_for(8, 2)
    header = {"op": "put", "id": 4, "ns": ns, "args": {"tokens": toks.tobytes()},
              "sizes": [spec.block_bytes] * 2}
    r.send(frame_bytes(header) + b"\x00" * 100)  # then silence, the socket kept open
    assert wait_until(lambda: store.lease_count)  # the put holds its write lease while it receives
    assert wait_until(lambda: not store.lease_count)  # until the stall drops the connection
    assert r.closed()
    good()
