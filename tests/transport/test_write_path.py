"""A daemon put that waits for the SSD writer stalls only its own connection.

The store is the real TieredStore over the real SSD tier, its files through
``FaultyFileSystem``; ``tests.store.stalled_writer`` brings it to the state in
which a put must wait for the writer (staging full, the write parked at a
gate). Served by a real server over tcp and shm, a put in flight on one
connection must not stop a ping, a lookup or a get on another.
"""

from __future__ import annotations

import threading

import pytest

from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.store.helpers import payloads_for
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

