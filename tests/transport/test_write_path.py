"""A daemon put that waits for the SSD writer stalls only its own connection.

The store is the real TieredStore over the real SSD tier, its files through
``FaultyFileSystem``; ``tests.store.stalled_writer`` brings it to the state in
which a put must wait for the writer (staging full, the write parked at a
gate). Served by a real server over tcp and shm, a put in flight on one
connection must not stop a ping, a lookup or a get on another.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kvstore.ssd.fs import FaultyFileSystem
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.store.helpers import make_spec, payloads_for, ssd_on
from tests.store.stalled_writer import stalled_store
from tests.transport.conftest import listen_url
from tests.waiting import wait_until


@pytest.mark.integration
@pytest.mark.parametrize("via", ["tcp", "shm"])
def test_a_put_waiting_for_the_ssd_writer_leaves_other_connections_served(tmp_path, sockdir,
                                                                             via):
    st = stalled_store(str(tmp_path / "ssd"))
    store, ns, spec = st.store, st.ns, st.spec
    server = ServerThread(store, [listen_url(via, sockdir)]).start()
    writer = reader = None
    try:
        url = server.urls[0]
        writer, reader = RemoteStore(url), RemoteStore(url)
        writer.register(spec)
        reader.register(spec)
        tokens = st.next_tokens
        result: list = []
        put = threading.Thread(
            target=lambda: result.append(writer.put(ns, tokens, payloads_for(ns, spec, tokens))))
        put.start()
        assert wait_until(lambda: st.fs.waiting.get("pwritev") == 1), "no write reached the gate"
        assert not result, "the put should be waiting for the held SSD writer"
        reader.ping()  # answered while the put waits
        assert reader.lookup(ns, tokens) == 0
        cached = st.resident_tokens
        assert reader.lookup(ns, cached) == len(cached)
        n, blocks = reader.get(ns, cached)
        assert n == len(cached) and [bytes(b) for b in blocks] == payloads_for(ns, spec, cached)
        assert put.is_alive() and not result
        st.release()  # the writer goes on: the put completes
        put.join(timeout=30)
        assert result == [len(tokens)]
        assert reader.lookup(ns, tokens) == len(tokens)
        store.check()
    finally:
        st.fs.clear()
        for client in (writer, reader):
            if client is not None:
                client.close()
        server.stop()
        store.close()



@pytest.mark.unit
def test_a_registration_waiting_for_the_manifest_write_leaves_other_connections_served(
        tmp_path, sockdir):
    """A new namespace waits for its manifest write (rename + fsync on the SSD); with that
    write parked at a gate, another connection's ping, lookup and get are answered."""
    fs = FaultyFileSystem()
    spec, other = make_spec(block_tokens=4, model="first"), make_spec(block_tokens=4, model="new")
    store = TieredStore(StoreConfig(cpu_bytes=1 << 20, ssd_bytes=16 << 20,
                                    ssd_dir=str(tmp_path / "ssd"), segment_bytes=1 << 20,
                                    ssd_factory=ssd_on(fs)))
    ns = store.register(spec)
    tokens = np.arange(8, dtype=np.uint32)
    assert store.put(ns, tokens, payloads_for(ns, spec, tokens)) == 8
    server = ServerThread(store, [listen_url("tcp", sockdir)]).start()
    registrar = reader = None
    gate = fs.hold("rename")
    try:
        registrar, reader = RemoteStore(server.urls[0]), RemoteStore(server.urls[0])
        reader.register(spec)
        result: list = []
        job = threading.Thread(target=lambda: result.append(registrar.register(other)))
        job.start()
        assert wait_until(lambda: fs.waiting.get("rename") == 1), "no manifest write at the gate"
        reader.ping()
        assert reader.lookup(ns, tokens) == 8
        n, blocks = reader.get(ns, tokens)
        assert n == 8 and [bytes(b) for b in blocks] == payloads_for(ns, spec, tokens)
        assert job.is_alive() and not result  # still waiting for its manifest write
        gate.set()
        job.join(timeout=30)
        assert len(result) == 1 and registrar.lookup(result[0], tokens) == 0
    finally:
        fs.clear()
        for client in (registrar, reader):
            if client is not None:
                client.close()
        server.stop()
        store.close()
