"""``kvstore serve`` as a real process: SIGTERM drains, SIGKILL mid-request, killed clients."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kvstore.demo.daemon_process import ROOT, DaemonProc, daemon_args
from kvstore.errors import Timeout, Unavailable
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.transport.conftest import HAVE_UCX, blocks_for, listen_url, spec_of, tokens_for
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def joined(blocks) -> bytes:
    return b"".join(bytes(memoryview(b).cast("B")) for b in blocks)


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_serve_sigterm_drains_and_cleans_up(sockdir):
    d = DaemonProc(daemon_args(sockdir, ("shm", "tcp")))
    spec = spec_of()
    shm = RemoteStore.connect(d.url("shm"), timeout=10)
    tcp = RemoteStore.connect(d.url("tcp"), timeout=10)
    ns = shm.register(spec)
    assert tcp.register(spec) == ns
    toks = tokens_for(1, 4)
    blocks = blocks_for(toks, spec)
    assert tcp.put(ns, toks, blocks) == 64
    n, got = shm.get(ns, toks)
    assert n == 64 and joined(got) == joined(blocks)
    assert shm.ops.arena is not None  # mapped from a descriptor: nothing in /dev/shm names it
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"kvstore-{d.pid}-")]

    stop = threading.Event()
    outcomes = {"ok": 0, "miss": 0}

    def hammer():  # requests in flight while SIGTERM arrives: each answers or misses
        while not stop.is_set():
            n, _ = tcp.get(ns, toks)
            outcomes["ok" if n == 64 else "miss"] += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    assert wait_until(lambda: outcomes["ok"] >= 3), "no answers before SIGTERM"
    rc = d.terminate(timeout=60)
    stop.set()
    worker.join(30)
    assert not worker.is_alive()
    assert rc == 0, "".join(d.lines[-20:])
    assert outcomes["ok"] > 0
    log = "".join(d.lines)
    assert "shutting down" in log and "kvstore stopped" in log
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"kvstore-{d.pid}-")]
    assert not os.path.exists(f"{sockdir}/kv.sock")  # nor in the socket folder
    assert shm.lookup(ns, toks) == 0 and tcp.lookup(ns, toks) == 0  # down: misses
    shm.close()
    tcp.close()


@pytest.mark.parametrize("carrier", ["tcp", "shm", "ucx"])
def test_daemon_killed_mid_request(sockdir, carrier):
    if carrier == "ucx" and not HAVE_UCX:
        pytest.skip("ucxx is not installed")
    d = DaemonProc(daemon_args(sockdir, (carrier,), "--cpu-bytes", "256MiB"))
    url = d.urls[0]
    from kvstore.layout import KVLayout
    from kvstore.namespace_spec import NamespaceSpec

    spec = NamespaceSpec(KVLayout("big", 2, 8, 128, "float16", 256))  # 2 MiB blocks
    soft = RemoteStore.connect(url, timeout=5, connect_timeout=2)
    strict = RemoteStore.connect(url, timeout=5, connect_timeout=2, strict=True)
    ns = soft.register(spec)
    strict.register(spec)
    toks = tokens_for(2, 16, block_tokens=256)
    import numpy as np

    blocks = [np.full(spec.block_bytes, i, np.uint8) for i in range(16)]
    assert soft.put(ns, toks, blocks) == 16 * 256
    results, strict_results, errors = [], [], []

    def reader(client, got):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                n, _ = client.get_into(ns, toks)
            except (Unavailable, Timeout) as exc:
                errors.append(exc)
                return
            got.append(n)
            if n == 0:
                return

    threads = [threading.Thread(target=reader, args=(soft, results)),
               threading.Thread(target=reader, args=(strict, strict_results))]
    for t in threads:
        t.start()
    assert wait_until(lambda: results and strict_results), "readers got nothing"
    d.proc.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a client hung on a dead daemon"
    assert time.monotonic() - t0 < 15
    assert results and results[-1] == 0, results[-5:]  # the soft client now misses
    assert errors and isinstance(errors[0], (Unavailable, Timeout)), errors  # strict raised
    assert all(n == 16 * 256 for n in strict_results)  # and never returned a miss
    t1 = time.monotonic()
    assert soft.lookup(ns, toks) == 0
    assert time.monotonic() - t1 < 6
    d.kill()
    # no arena outlives its daemon: arenas are memory files, gone with the killed process
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"kvstore-{d.pid}-")]
    soft.close()
    strict.close()


CLIENT = textwrap.dedent("""
    import sys, numpy as np
    from kvstore.transport.remote import RemoteStore
    from kvstore.transport.messages import Op
    from tests.transport.conftest import spec_of, tokens_for, blocks_for
    url = sys.argv[1]
    c = RemoteStore.connect(url, strict=True)
    spec = spec_of()
    ns = c.register(spec)
    if url.startswith("shm"):  # hold leases, then die holding them
        async def hold():
            for i in range(5):
                t = tokens_for(900 + i, 2).tobytes()
                await c.conn.request(Op.LEASE, ns, {"tokens": t, "mode": "write"})
        c._run(hold())
    print("holding", flush=True)
    i = 0
    while True:  # busy mid-request when the kill lands
        toks = tokens_for(i % 50, 8)
        c.put(ns, toks, blocks_for(toks, spec))
        c.get(ns, toks)
        i += 1
""")


def test_client_killed_mid_request_releases_its_leases(store, carrier, sockdir):
    with ServerThread(store, [listen_url(carrier, sockdir)]) as srv:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, srv.urls[0]], stdout=subprocess.PIPE,
                                text=True, env=env, cwd=ROOT)
        try:
            assert proc.stdout.readline().strip() == "holding"
            if carrier == "shm":
                assert store.lease_count >= 5
            busy = srv.dispatcher.requests + 4  # mid-request when the kill lands
            assert wait_until(lambda: srv.dispatcher.requests >= busy)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert wait_for(lambda: not store.lease_count), store.lease_count
        assert wait_for(lambda: srv.dispatcher.connections == 0)
        c = RemoteStore.connect(srv.urls[0], strict=True)  # same identity comes back
        spec = spec_of()
        ns = c.register(spec)
        toks = tokens_for(3, 8)
        assert c.put(ns, toks, blocks_for(toks, spec)) == 128
        n, got = c.get(ns, toks)
        assert n == 128 and joined(got) == joined(blocks_for(toks, spec))
        c.close()


def test_serve_with_no_flags(sockdir, tmp_path):
    env = {
        "XDG_RUNTIME_DIR": sockdir, "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        # the default tcp port may be taken on a shared machine: only the port is overridden
        "KVSTORE_LISTEN": f"shm://{sockdir}/kvstore/kvstore.sock,tcp://127.0.0.1:0",
        "KVSTORE_CPU_BYTES": "64MiB",
    }
    d = DaemonProc([], env=env)
    assert d.urls[0] == f"shm://{sockdir}/kvstore/kvstore.sock"
    c = RemoteStore.connect(d.urls[0], strict=True)
    c.ping()
    c.close()
    assert d.terminate() == 0
    assert not os.path.exists(f"{sockdir}/kvstore")  # the folder it made is gone too


@pytest.mark.skipif(importlib.util.find_spec("kvstore.ssd.tier") is None,
                    reason="needs the SSD tier (kvstore.ssd.tier)")
def test_sigkill_loses_nothing_flushed(sockdir, tmp_path):
    args = daemon_args(sockdir, ("tcp",))
    args[args.index("--ssd-bytes") + 1] = "256MiB"
    args += ["--ssd-dir", str(tmp_path / "ssd")]
    d = DaemonProc(args)
    spec = spec_of()
    c = RemoteStore.connect(d.urls[0], strict=True)
    ns = c.register(spec)
    toks = tokens_for(4, 8)
    blocks = blocks_for(toks, spec)
    assert c.put(ns, toks, blocks) == 128
    c.flush()
    d.proc.send_signal(signal.SIGKILL)
    d.kill()
    c.close()
    d2 = DaemonProc(args)
    c = RemoteStore.connect(d2.urls[0], strict=True)
    ns = c.register(spec)
    n, got = c.get(ns, toks)
    assert n == 128 and joined(got) == joined(blocks)
    c.close()
    assert d2.terminate() == 0
