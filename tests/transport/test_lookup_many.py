"""``lookup_many``: many lookups of one namespace in one round trip, on every layer.

The embedded ``TieredStore`` answers under one lock; the op carries the
batch over each carrier (one request, counted at the daemon), splits a batch
past ``max_tokens``, refuses malformed args, and a daemon that predates the
op gets single lookups instead.
"""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from kvstore.client import KVClient
from kvstore.errors import ErrorCode, InvalidArgument
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.tokens import as_tokens
from kvstore.transport.fd_channel import CONTROL_SEND_BUFFER
from kvstore.transport.limits import Limits
from kvstore.transport.messages import Op, lookup_many_args, lookup_many_request
from kvstore.transport.tcp import RECV_BUFFER, TcpListener
from kvstore.transport.urls import parse_url
from tests.transport.conftest import blocks_for, small_layout, spec_of, tokens_for
from tests.transport.rawwire import Raw


def cached_batch(store, ns, spec, count: int = 10):
    """``count`` prompts, prompt i with i % 4 of its 3 blocks cached; and their answers."""
    prompts, want = [], []
    for i in range(count):
        toks = tokens_for(500 + i, 3)
        cached = i % 4
        if cached:
            assert store.put(ns, toks[: cached * 16], blocks_for(toks[: cached * 16], spec)) \
                == min(cached, 3) * 16
        prompts.append(toks)
        want.append(min(cached, 3) * 16)
    return prompts, want


def test_tiered_store_lookup_many():
    store = TieredStore(StoreConfig(cpu_bytes="16MiB"))
    spec = spec_of()
    ns = store.register(spec)
    prompts, want = cached_batch(store, ns, spec)
    assert store.lookup_many(ns, prompts) == want
    assert store.lookup_many(ns, prompts) == [store.lookup(ns, p) for p in prompts]
    assert store.lookup_many(ns, prompts[:2], [b"salt", b""]) == [0, want[1]]
    assert store.lookup_many(ns, []) == []
    with pytest.raises(InvalidArgument):
        store.lookup_many(ns, prompts[:2], [b""])
    store.close()


def test_messages():
    prompts = [as_tokens(tokens_for(1, 2)), as_tokens(tokens_for(2, 1).astype(np.int64))]
    args, payloads = lookup_many_args(prompts, [b"", b""])
    assert args == {}  # no extra set: left out
    # each segment is its array's own memory as bytes (no copy), little-endian uint32
    assert [p.obj is a for p, a in zip(payloads, prompts)] == [True, True]
    assert [np.frombuffer(p, "<u4").tolist() for p in payloads] == [list(p) for p in prompts]
    args, _ = lookup_many_args(prompts, [b"a", b""])
    assert lookup_many_request(args, [128, 64]) == [b"a", b""]
    assert lookup_many_request({}, [128, 64]) == [b"", b""]
    for bad_args, sizes in (({}, [3]), ({"extra": [b""]}, [4, 4]), ({"extra": "x"}, [4]),
                            ({}, [4] * 4097)):
        with pytest.raises(InvalidArgument):
            lookup_many_request(bad_args, sizes)


def test_one_request_over_each_carrier(daemon, connect, store):
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec)
    served = daemon.dispatcher.requests
    assert c.lookup_many(ns, prompts) == want
    assert daemon.dispatcher.requests == served + 1  # one round trip for ten lookups
    assert asyncio.run(c.alookup_many(ns, prompts)) == want
    salted = [b"s"] * len(prompts)
    assert c.lookup_many(ns, prompts, salted) == [0] * len(prompts)
    assert c.lookup_many(ns, []) == []


def test_a_batch_past_max_tokens_is_split(daemon, connect, carrier):
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 12)
    c.ops.conn.limits = Limits(max_tokens=100)  # two prompts of 48 tokens per request
    served = daemon.dispatcher.requests
    assert c.lookup_many(ns, prompts) == want
    assert daemon.dispatcher.requests == served + 6


def test_the_namespace_api(daemon, carrier):
    with KVClient.connect(daemon.urls[0], strict=True, timeout=10) as client:
        ns = client.namespace(small_layout())
        toks = tokens_for(4, 2)
        ns.put_blocks(toks, blocks_for(toks, ns.spec))
        assert ns.lookup_many([toks, toks[:20], tokens_for(5, 2)]) == [32, 16, 0]


def test_an_older_daemon_gets_single_lookups(daemon, connect, carrier):
    daemon.dispatcher.ops.handlers.pop(Op.LOOKUP_MANY)  # an older daemon: "unknown op"
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 4)
    assert c.lookup_many(ns, prompts) == want  # unknown op, then single lookups
    served = daemon.dispatcher.requests
    assert c.lookup_many(ns, prompts) == want
    assert daemon.dispatcher.requests == served + 4  # not asked again: one lookup each


def test_malformed_on_the_raw_wire(daemon, carrier):
    if carrier == "ucx":
        pytest.skip("the raw wire client speaks tcp and shm")
    raw = Raw(daemon.urls[0])
    assert raw.hello()["status"] == 0
    reg = raw.request("register", None, {"spec": spec_of().to_dict()})
    ns = reg["result"]["ns"]
    toks = np.arange(32, dtype=np.uint32).tobytes()
    bad = raw.request("lookup_many", ns, {"extra": [b"", b""]}, [toks])
    assert bad["status"] == ErrorCode.INVALID_ARGUMENT
    ok = raw.request("lookup_many", ns, {}, [toks, toks])
    assert ok["status"] == 0 and ok["result"]["tokens"] == [0, 0]  # the connection is kept
    odd = raw.request("lookup_many", ns, {}, [toks[:6]])  # not whole tokens
    assert odd["status"] == ErrorCode.INVALID_ARGUMENT
    too_many = raw.request("lookup_many", ns, {}, [b""] * 4097)
    assert too_many["status"] == ErrorCode.INVALID_ARGUMENT
    unknown_ns = raw.request("lookup_many", b"\x01" * 16, {}, [toks])
    assert unknown_ns["status"] == ErrorCode.NOT_FOUND
    assert raw.request("ping")["status"] == 0
    raw.close()


def test_a_batch_over_max_tokens_is_refused_on_the_raw_wire(daemon, carrier):
    """Past ``max_tokens`` in all: TooLarge, its payload skipped, the connection kept."""
    if carrier == "ucx":
        pytest.skip("the raw wire client speaks tcp and shm")
    raw = Raw(daemon.urls[0])
    assert raw.hello()["status"] == 0
    ns = raw.request("register", None, {"spec": spec_of().to_dict()})["result"]["ns"]
    half = np.zeros(daemon.dispatcher.limits.max_tokens // 2 + 1, dtype=np.uint32).tobytes()
    over = raw.request("lookup_many", ns, {}, [half, half])
    assert over["status"] == ErrorCode.TOO_LARGE
    toks = np.arange(32, dtype=np.uint32).tobytes()
    assert raw.request("lookup_many", ns, {}, [toks])["result"]["tokens"] == [0]
    raw.close()


def test_lookup_many_counts_as_its_single_lookups(store):
    """The lookup counters move once a batch, by what the batch's single lookups add."""
    spec = spec_of()
    ns = store.register(spec)
    prompts, want = cached_batch(store, ns, spec)
    prompts.append(prompts[1][:20])  # a partial tail block: not asked for
    want.append(16)

    def counters():
        (n,) = store.stats().namespaces  # the one namespace of this store
        return n.lookup_hits, n.lookup_misses

    assert store.lookup_many(ns, prompts) == want
    batch = counters()
    assert batch == (sum(want) // 16, sum(len(p) // 16 for p in prompts) - sum(want) // 16)
    for p in prompts:
        store.lookup(ns, p)
    assert counters() == (2 * batch[0], 2 * batch[1])


def test_the_tcp_listener_asks_for_a_request_sized_receive_buffer():
    """A lookup_many of 64 prompts is a 1 MiB request: the daemon's tcp sockets take it
    in one window instead of waiting for autotuning (``transport.tcp.RECV_BUFFER``)."""
    sock = TcpListener(None, parse_url("tcp://127.0.0.1:0"))._bind()
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            allowed = int(f.read())
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert got >= min(RECV_BUFFER, allowed)  # Linux reports twice what was granted
    finally:
        sock.close()


def test_shm_clients_send_a_batch_without_waiting_for_the_daemon(daemon, connect, carrier):
    """Both shm client connections (the sync one and the asyncio twins') have room for a
    1 MiB request in their send buffer (``transport.fd_channel.CONTROL_SEND_BUFFER``)."""
    if carrier != "shm":
        pytest.skip("the shm control socket's send buffer")
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 4)
    assert c.lookup_many(ns, prompts) == want
    assert asyncio.run(c.alookup_many(ns, prompts)) == want
    with open("/proc/sys/net/core/wmem_max") as f:
        allowed = int(f.read())
    for conn in (c.conn, c.aops.conn):
        got = conn.channel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert got >= min(CONTROL_SEND_BUFFER, allowed)  # Linux reports twice the grant
