"""Deadlines, breakers, the prefix journal (in-process: a silent loopback server, no daemons)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from kvstore.cluster.breaker import Breaker
from kvstore.cluster.rebalance import PrefixJournal
from kvstore.errors import Timeout, Unavailable
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.transport.remote import RemoteStore

LAYOUT = KVLayout(model_id="deadline-test", num_layers=1, num_kv_heads=1, head_dim=8,
                  dtype="float16", block_tokens=16)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_backoff_doubles_and_a_probe_closes_it():
    clock = Clock()
    b = Breaker(base=0.25, cap=1.0, clock=clock)
    assert b.allows("n1")
    assert b.failed("n1") == 0.25 and not b.allows("n1") and b.due() == []
    clock.now += 0.3
    assert b.due() == ["n1"]
    b.probed("n1", False)
    assert not b.allows("n1") and b.due() == []  # 0.5 s now
    assert b.failed("n1") == 1.0 and b.failed("n1") == 1.0  # capped
    b.probed("n1", True)
    assert b.allows("n1") and b.opened == 1
    b.failed("n2")
    b.forget({"n1"})
    assert b.allows("n2")


def test_journal_keeps_the_newest_and_forgets_deleted_prefixes():
    spec = NamespaceSpec(LAYOUT)
    j = PrefixJournal(limit=3)
    for i in range(5):
        j.add(spec, b"ns", np.arange(i, i + 32), b"")
    assert len(j) == 3 and int(j.entries()[0].tokens[0]) == 2
    j.discard(b"ns", np.arange(4, 4 + 16), b"")
    assert [int(e.tokens[0]) for e in j.entries()] == [2, 3]


@pytest.fixture
def silent_server():
    """Accepts connections and never answers (a hung daemon: no reset)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


def test_a_silent_daemon_costs_each_request_its_deadline_not_more(silent_server):
    rs = RemoteStore(silent_server, strict=True, timeout=0.4)
    try:
        ns = rs.register(NamespaceSpec(LAYOUT))
        toks = np.arange(32)
        time.sleep(0.6)  # past the retry interval of the registration's failed connect
        waits, errors = [], []

        def one():
            t0 = time.monotonic()
            try:
                rs.lookup(ns, toks)
            except (Timeout, Unavailable) as exc:
                errors.append(str(exc))
            waits.append(time.monotonic() - t0)

        threads = [threading.Thread(target=one) for _ in range(4)]  # queued on one connection
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 4 and max(waits) < 1.0, (waits, errors)
        assert all("I/O thread" not in e for e in errors)  # the request's own error, as it is
        assert any("within 0." in e for e in errors), errors
    finally:
        rs.close()


def test_connect_failure_says_why():
    rs = RemoteStore("tcp://127.0.0.1:9", strict=True, timeout=0.5)  # nothing listens on 9
    try:
        with pytest.raises(Unavailable) as err:
            rs.ping()
        assert str(err.value).rstrip().endswith(":") is False
        assert "cannot reach tcp://127.0.0.1:9: " in str(err.value)
        assert len(str(err.value).split("cannot reach tcp://127.0.0.1:9: ", 1)[1]) > 0
    finally:
        rs.close()
