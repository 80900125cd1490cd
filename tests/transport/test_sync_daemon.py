"""The synchronous client against a real ``kvstore serve`` over shm and tcp: a restart.

While the daemon is down a soft client misses (lookup 0, lookup_many all 0,
put 0) and a strict one raises ``Unavailable``; once a new daemon listens on
the same address both reconnect on their next call, say hello again (on shm:
map the new daemon's arena, received as a descriptor) and re-register their
namespaces, without being told.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.demo.daemon_process import DaemonProc, free_port
from kvstore.errors import Unavailable
from kvstore.transport.remote import RemoteStore
from kvstore.transport.sync_connection import SyncConnection
from tests.transport.conftest import blocks_for, spec_of, tokens_for
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("carrier", ["tcp", "shm"])
def test_reconnect_after_a_daemon_restart(carrier, sockdir):
    listen = f"shm://{sockdir}/kv.sock" if carrier == "shm" else f"tcp://127.0.0.1:{free_port()}"
    args = ["--listen", listen, "--cpu-bytes", "64MiB", "--ssd-bytes", "0"]
    daemon = DaemonProc(args)
    url = daemon.url(carrier)
    soft = RemoteStore.connect(url, timeout=5, retry_interval=0.05)
    strict = RemoteStore.connect(url, strict=True, timeout=5, retry_interval=0.05)
    assert isinstance(soft.conn, SyncConnection)
    spec = spec_of()
    ns = soft.register(spec)
    assert strict.register(spec) == ns
    toks, other = tokens_for(1, 3), tokens_for(2, 2)
    try:
        assert soft.put(ns, toks, blocks_for(toks, spec)) == 48
        assert strict.lookup_many(ns, [toks, other]) == [48, 0]
        arena = soft.ops.arena.identity if carrier == "shm" else None
        daemon.terminate()

        assert soft.lookup(ns, toks) == 0  # down: a miss
        assert soft.lookup_many(ns, [toks, other]) == [0, 0]
        assert soft.put(ns, other, blocks_for(other, spec)) == 0
        with pytest.raises(Unavailable):
            strict.lookup(ns, toks)

        daemon = DaemonProc(args)  # the same address, an empty store
        wait_until(lambda: soft.put(ns, other, blocks_for(other, spec)) == 32, timeout=10)
        assert soft.lookup_many(ns, [toks, other]) == [0, 32]
        wait_until(lambda: _answers(strict, ns, other), timeout=10)
        n, got = strict.get(ns, other)
        assert n == 32 and all(np.array_equal(np.frombuffer(g, np.uint8), b)
                               for g, b in zip(got, blocks_for(other, spec)))
        if carrier == "shm":
            assert soft.ops.arena.identity != arena  # the new daemon's arena, mapped anew
    finally:
        soft.close()
        strict.close()
        daemon.kill()


def _answers(store: RemoteStore, ns: bytes, toks) -> bool:
    try:
        return store.lookup(ns, toks) == 32
    except Unavailable:  # retry_interval after the failed attempts while it was down
        return False
