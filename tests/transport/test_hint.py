"""The ``hint`` op: carried over every carrier, applied by the daemon's store, soft when offline.

The daemon's store is small (32 blocks of 4 KiB) so that a few puts evict:
a prefix hinted ``session_end`` goes before an older unhinted one, and a
protected one outlives newer ones. Also against a real ``kvstore serve``
process (tcp and shm), on the raw wire, and with the daemon gone.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from kvstore.demo.daemon_process import DaemonProc, daemon_args
from kvstore.errors import ErrorCode, InvalidArgument, Unavailable
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.store_api import PrefixHint
from kvstore.transport.messages import decode_hint, encode_hint
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.transport.conftest import blocks_for, listen_url, spec_of
from tests.transport.rawwire import Raw

BT = 16  # tokens per block (small_layout)
CAPACITY = 32  # blocks of 4 KiB in the daemon's arena


def toks(start: int, blocks: int) -> np.ndarray:
    return np.arange(start, start + blocks * BT, dtype=np.uint32)


@pytest.fixture
def small_daemon(carrier, sockdir):
    store = TieredStore(StoreConfig(cpu_bytes=CAPACITY * 4096))
    srv = ServerThread(store, [listen_url(carrier, sockdir)]).start()
    yield srv
    srv.stop()
    store.close()


def put(rs, ns, spec, tokens) -> int:
    return rs.put(ns, tokens, blocks_for(tokens, spec))


def fill(rs, ns, spec, first: int, blocks: int) -> None:
    for i in range(blocks):
        put(rs, ns, spec, toks(first + 1000 * i, 1))


def check_session_end_order(rs: RemoteStore) -> None:
    """An ended session's prefix is evicted before an older prefix nobody hinted."""
    spec = spec_of()
    ns = rs.register(spec)
    older, ended = toks(10_000, 3), toks(20_000, 3)
    assert put(rs, ns, spec, older) == 48 and put(rs, ns, spec, ended) == 48
    fill(rs, ns, spec, 100_000, CAPACITY - 6)
    assert rs.hint(ns, ended, PrefixHint(session_end=True)) == 48
    assert rs.lookup(ns, ended) == 48  # nothing goes until room is needed
    fill(rs, ns, spec, 500_000, 3)
    assert rs.lookup(ns, ended) == 0
    assert rs.lookup(ns, older) == 48


def check_protection(rs: RemoteStore) -> None:
    """``keep_until`` (seconds from now, on the wire) and ``priority`` both protect."""
    spec = spec_of()
    ns = rs.register(spec)
    by_time, by_priority = toks(30_000, 2), toks(40_000, 2)
    put(rs, ns, spec, by_time)
    put(rs, ns, spec, by_priority)
    assert rs.hint(ns, by_time, PrefixHint(keep_until=600)) == 32
    assert rs.hint(ns, by_priority, PrefixHint(priority=7)) == 32
    fill(rs, ns, spec, 700_000, 2 * CAPACITY)
    assert rs.lookup(ns, by_time) == 32 and rs.lookup(ns, by_priority) == 32


def test_session_end_over_each_carrier(small_daemon):
    with RemoteStore.connect(small_daemon.urls[0], timeout=10) as rs:
        check_session_end_order(rs)


def test_protection_over_each_carrier(small_daemon):
    with RemoteStore.connect(small_daemon.urls[0], timeout=10) as rs:
        check_protection(rs)


def test_hint_of_what_is_not_cached_is_a_no_op(small_daemon):
    with RemoteStore.connect(small_daemon.urls[0], timeout=10) as rs:
        spec = spec_of()
        ns = rs.register(spec)
        a = toks(1, 2)
        put(rs, ns, spec, a)
        assert rs.hint(ns, toks(90_000, 2), PrefixHint(session_end=True)) == 0
        assert rs.hint(ns, np.concatenate([a, toks(5, 1)]), PrefixHint(priority=1)) == 32
        assert rs.hint(ns, a, PrefixHint(session_end=True), extra=b"lora") == 0
        assert rs.get(ns, a)[0] == 32


def test_asyncio_twin(small_daemon):
    with RemoteStore.connect(small_daemon.urls[0], timeout=10) as rs:
        spec = spec_of()
        ns = rs.register(spec)
        a = toks(1, 2)
        put(rs, ns, spec, a)

        async def main():
            return await rs.ahint(ns, a, PrefixHint(session_end=True, priority=2))

        assert asyncio.run(main()) == 32


def test_hint_to_an_unreachable_daemon_is_dropped_unless_strict(sockdir):
    spec = spec_of()
    soft = RemoteStore.connect(f"shm://{sockdir}/nobody.sock", connect_timeout=2,
                               retry_interval=0.05)
    ns = soft.register(spec)
    assert soft.hint(ns, toks(1, 2), PrefixHint(session_end=True)) == 0
    strict = RemoteStore.connect("tcp://127.0.0.1:9", strict=True, connect_timeout=2)
    strict.register(spec)
    with pytest.raises(Unavailable):
        strict.hint(ns, toks(1, 2), PrefixHint(session_end=True))
    soft.close()
    strict.close()


# -- the wire ---------------------------------------------------------------------------
def test_hint_args_on_the_wire():
    assert encode_hint(PrefixHint()) == {}
    assert encode_hint(PrefixHint(True, 30, 2)) == {"session_end": True, "keep_until": 30.0,
                                                    "priority": 2}
    assert decode_hint({"keep_until": 5}) == PrefixHint(keep_until=5.0)
    assert decode_hint({"priority": -3}) == PrefixHint(priority=-3)
    for bad in ({"session_end": 1}, {"session_end": "yes"}, {"keep_until": -1.0},
                {"keep_until": "1"}, {"keep_until": float("nan")}, {"priority": 1.0},
                {"priority": 1 << 63}, {"priority": True}):
        with pytest.raises(InvalidArgument):
            decode_hint(bad)


@pytest.mark.parametrize("carrier", ["tcp"])
def test_raw_hint_frames(small_daemon):
    spec = spec_of()
    raw = Raw(small_daemon.urls[0])
    assert raw.hello()["status"] == 0
    reg = raw.request("register", args={"spec": spec.to_dict()})
    ns = reg["result"]["ns"]
    a = toks(1, 2)
    payloads = [bytes(b) for b in blocks_for(a, spec)]
    assert raw.request("put", ns, {"tokens": a.tobytes()}, payloads)["result"] == {"tokens": 32}
    reply = raw.request("hint", ns, {"tokens": a.tobytes(), "session_end": True,
                                     "keep_until": 30.0, "priority": 3})
    assert reply["status"] == 0 and reply["result"] == {"tokens": 32}
    assert raw.request("hint", ns, {"tokens": a.tobytes()})["result"] == {"tokens": 32}  # clears
    bad = raw.request("hint", ns, {"tokens": a.tobytes(), "keep_until": -5})
    assert bad["status"] == ErrorCode.INVALID_ARGUMENT
    unknown_ns = raw.request("hint", b"\x01" * 16, {"tokens": a.tobytes()})
    assert unknown_ns["status"] == ErrorCode.NOT_FOUND
    no_ns = raw.request("hint", None, {"tokens": a.tobytes()})
    assert no_ns["status"] == ErrorCode.NOT_FOUND
    assert raw.request("ping")["status"] == 0  # refusals kept the connection
    raw.close()


# -- a real daemon process ---------------------------------------------------------------
@pytest.mark.integration
def test_hints_against_a_real_daemon_over_tcp_and_shm(sockdir):
    # evictions exactly when room is needed (the daemon's evict-ahead off): the checks time
    # each eviction to the block (with it on, the same blocks go in the same order, earlier)
    config = os.path.join(sockdir, "kvstore.toml")
    with open(config, "w") as f:
        f.write("[store]\nevict_ahead_share = 0\n")
    d = DaemonProc(daemon_args(sockdir, ("shm", "tcp"), "--cpu-bytes", str(CAPACITY * 4096),
                               "--config", config))
    try:
        for carrier in ("tcp", "shm"):
            with RemoteStore.connect(d.url(carrier), timeout=10, strict=True) as rs:
                check_session_end_order(rs)
                check_protection(rs)
                ns = rs.register(spec_of())
                for protected in (toks(30_000, 2), toks(40_000, 2)):  # the next carrier's turn
                    assert rs.delete(ns, protected) == 2
    finally:
        assert d.terminate(timeout=60) == 0, "".join(d.lines[-20:])


@pytest.mark.parametrize("carrier", ["tcp"])
def test_a_daemon_that_predates_the_op_drops_hints(small_daemon):
    from kvstore.transport.messages import Op

    small_daemon.dispatcher.ops.handlers.pop(Op.HINT)  # an older daemon: "unknown op"
    with RemoteStore.connect(small_daemon.urls[0], timeout=10, strict=True) as rs:
        spec = spec_of()
        ns = rs.register(spec)
        a = toks(1, 2)
        put(rs, ns, spec, a)
        assert rs.hint(ns, a, PrefixHint(session_end=True)) == 0  # dropped, even when strict
        served = small_daemon.dispatcher.requests
        assert rs.hint(ns, a, PrefixHint(session_end=True)) == 0
        assert small_daemon.dispatcher.requests == served  # not sent again for a while
        assert rs.lookup(ns, a) == 32  # the connection works on
        rs.ops._no_hints_until = 0.0  # the minute is over
        assert rs.hint(ns, a, PrefixHint(priority=1)) == 0  # asked again: still unknown
        assert small_daemon.dispatcher.requests > served + 1  # it was sent
