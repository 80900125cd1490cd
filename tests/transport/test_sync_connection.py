"""The synchronous client on the caller's thread (``transport.sync_connection``).

``drive`` runs the ops' coroutines without an event loop; ``RemoteStore`` over
tcp, shm and ucx sends its sync calls on the calling thread (no I/O thread), shares
one connection between threads, keeps its deadlines, ``retry_interval`` and
``abort``, and shares its namespaces with the asyncio twins' connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import numpy as np
import pytest

from kvstore.errors import Timeout, Unavailable
from kvstore.transport.remote import RemoteStore
from kvstore.transport.sync_connection import SyncConnection, drive
from tests.transport.conftest import HAVE_UCX, blocks_for, small_layout, spec_of, tokens_for
from tests.waiting import wait_until


# -- drive ----------------------------------------------------------------------------
async def _value(x):
    return x * 2


async def _nested(x):
    return await _value(x) + 1


async def _suspends():
    await asyncio.sleep(0)
    return 1


def test_drive_returns_the_value_of_a_coroutine_that_never_suspends():
    assert drive(_nested(20)) == 41


def test_drive_raises_on_a_coroutine_that_suspends():
    with pytest.raises(RuntimeError, match="suspended"):
        drive(_suspends())


def test_drive_passes_errors_through():
    async def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        drive(fails())


# -- against a daemon (in-process server) ----------------------------------------------
@pytest.fixture(params=["tcp", "shm", pytest.param("ucx", marks=pytest.mark.integration)])
def carrier(request):
    """The carriers with a blocking path: all of them (ucx: its own worker, integration)."""
    if request.param == "ucx" and not HAVE_UCX:
        pytest.skip("ucxx is not installed")
    return request.param


@pytest.fixture
def blocking(connect):
    return connect


def test_sync_calls_do_not_use_the_io_thread(blocking):
    c = blocking()
    assert isinstance(c.conn, SyncConnection)
    spec = spec_of()
    ns = c.register(spec)
    toks = tokens_for(1, 3)
    before = {t.name for t in threading.enumerate()}
    assert c.put(ns, toks, blocks_for(toks, spec)) == 48
    assert c.lookup(ns, toks) == 48
    n, got = c.get(ns, toks)
    assert n == 48 and b"".join(bytes(b) for b in got) == b"".join(
        bytes(b) for b in blocks_for(toks, spec))
    assert c._io is None  # no I/O thread was asked for
    # none started (a thread of before may have ended meanwhile: the shm arena's prefault)
    assert {t.name for t in threading.enumerate()} - before == set()


def test_one_client_shared_by_threads(blocking):
    """Puts, gets and lookups from 6 threads at once on one client: every answer right."""
    c = blocking()
    spec = spec_of()
    ns = c.register(spec)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(15):
                toks = tokens_for(1000 * k + i, 2)
                blocks = blocks_for(toks, spec)
                assert c.put(ns, toks, blocks) == 32
                assert c.lookup(ns, toks) == 32
                n, got = c.get(ns, toks)
                assert n == 32 and all(bytes(a) == bytes(b) for a, b in zip(got, blocks))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_async_twins_share_the_namespaces(blocking):
    """A namespace registered on one path is registered on the other's session as needed."""
    c = blocking()
    spec = spec_of()
    ns = c.register(spec)
    toks = tokens_for(7, 2)

    other = spec_of(small_layout("other"))

    async def via_async():
        assert await c.aput(ns, toks, blocks_for(toks, spec)) == 32  # never registered there
        ns2 = await c.aregister(other)
        return ns2, await c.alookup(ns, toks)

    ns2, hit = asyncio.run(via_async())
    assert hit == 32
    assert c.lookup(ns2, toks) == 0  # registered by the twin, used here: no NotFound
    assert c.put(ns2, toks, blocks_for(toks, other)) == 32
    assert c.lookup_many(ns, [toks, toks[:16]]) == [32, 16]


def test_reconnect_after_drop_re_registers(blocking):
    c = blocking()
    spec = spec_of()
    ns = c.register(spec)
    toks = tokens_for(3, 2)
    c.put(ns, toks, blocks_for(toks, spec))
    gen = c.conn.generation
    c.conn._drop()
    assert c.lookup(ns, toks) == 32
    assert c.conn.generation == gen + 1


@pytest.mark.integration  # a forked child process
def test_a_forked_child_opens_its_own_connection(blocking, carrier):
    """After ``fork`` the child never uses the parent's socket (told by an at-fork hook,
    not a ``getpid`` call per request): it reconnects, and the parent's stream is intact."""
    if carrier == "ucx":
        pytest.skip("UCX cannot connect from a child of fork (test_ucx_sync_channel.py)")
    c = blocking()
    spec = spec_of()
    ns = c.register(spec)
    toks = tokens_for(8, 2)
    c.put(ns, toks, blocks_for(toks, spec))
    parent_channel = c.conn.channel
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        code = 1
        try:
            hit = c.lookup(ns, toks)
            fresh = c.conn.channel is not parent_channel
            os.write(write_end, f"{hit} {fresh}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert answer == "32 True"
    assert c.conn.channel is parent_channel  # the parent kept its connection
    assert c.lookup(ns, toks) == 32


# -- deadlines, retry, abort, soft failures against sockets that misbehave ----------------
@pytest.fixture
def silent_server():
    """A tcp listener that accepts and never answers."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(lsock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{lsock.getsockname()[1]}"
    stop.set()
    t.join(5)
    for s in accepted:
        s.close()
    lsock.close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


def test_deadline_of_a_silent_daemon(silent_server):
    c = RemoteStore.connect(silent_server, strict=True, timeout=0.3, connect_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(Timeout):
        c.ping()
    assert time.monotonic() - t0 < 5  # bounded by the deadline, not hanging
    c.close()


def test_retry_interval_after_a_failed_connect():
    c = RemoteStore.connect(closed_port_url(), strict=True, timeout=1, retry_interval=30)
    with pytest.raises(Unavailable, match="cannot reach"):
        c.ping()
    with pytest.raises(Unavailable, match="retrying in"):
        c.ping()  # no second connect attempt within retry_interval
    c.close()


def test_soft_failures_when_not_strict():
    c = RemoteStore.connect(closed_port_url(), strict=False, timeout=1)
    ns = c.register(spec_of())  # offline: remembered, registered on the next connect
    toks = tokens_for(1, 2)
    assert c.lookup(ns, toks) == 0
    assert c.lookup_many(ns, [toks, toks]) == [0, 0]
    assert c.get(ns, toks) == (0, [])
    assert c.put(ns, toks, blocks_for(toks, spec_of())) == 0
    strict = RemoteStore.connect(closed_port_url(), strict=True, timeout=1)
    with pytest.raises(Unavailable):
        strict.lookup_many(ns, [toks])
    c.close()
    strict.close()


def test_abort_ends_a_request_blocked_on_another_thread(silent_server):
    c = RemoteStore.connect(silent_server, strict=True, timeout=30, connect_timeout=30)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            c.ping()
        except BaseException as exc:  # reported below
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    wait_until(lambda: c.conn.channel is not None, timeout=10)
    c.abort("node left the cluster")
    t.join(10)
    assert not t.is_alive()
    assert isinstance(outcome[0], Unavailable) and "node left the cluster" in str(outcome[0])
    with pytest.raises(Unavailable, match="node left"):
        c.ping()


def test_lookup_tokens_of_many_dtypes(blocking):
    c = blocking()
    spec = spec_of()
    ns = c.register(spec)
    toks = tokens_for(9, 2)
    c.put(ns, toks, blocks_for(toks, spec))
    assert c.lookup(ns, toks.astype(np.int64)) == 32
    assert c.lookup(ns, [int(t) for t in toks]) == 32
