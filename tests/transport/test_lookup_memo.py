"""``lookup_many`` with the prompt memo over each carrier, and on the raw wire.

A prompt already sent on a connection crosses the wire as its digest (the
daemon's ``Dispatcher.observer`` sees each request's segments); the answers
and counters are those of single lookups; a memo that lost prompts costs one
more round trip, never a wrong answer; a memo is one connection's alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading

import numpy as np
import pytest

from kvstore.errors import ErrorCode
from kvstore.transport.digest_batch import digest
from kvstore.transport.limits import Limits
from kvstore.transport.remote import RemoteStore
from kvstore.transport.server import ServerThread
from tests.transport.conftest import blocks_for, listen_url, spec_of, tokens_for
from tests.transport.rawwire import Raw
from tests.transport.test_lookup_many import cached_batch
from tests.waiting import wait_until


class Requests:
    """A dispatcher observer: each ``lookup_many`` request's args and segment sizes."""

    def __init__(self):
        self.seen: list[tuple[dict, list[int]]] = []

    def request(self, carrier, req, outcome, seconds) -> None:
        if getattr(req.op, "value", "") == "lookup_many":
            self.seen.append((req.args, list(req.sizes)))

    def refused(self, carrier, code) -> None:
        pass

    def stalled(self, carrier, phase) -> None:
        pass

    def since(self, mark: int, count: int) -> list[tuple[dict, list[int]]]:
        """Requests ``mark`` to ``mark + count`` (told once each reply is sent: waited for)."""
        assert wait_until(lambda: len(self.seen) >= mark + count)
        return self.seen[mark : mark + count]


@pytest.fixture
def seen(daemon) -> Requests:
    daemon.dispatcher.observer = Requests()
    return daemon.dispatcher.observer


def counters(store):
    (n,) = store.stats().namespaces
    return n.lookup_hits, n.lookup_misses


def test_a_repeated_batch_goes_as_digests(daemon, connect, store, seen):
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec)
    before, mark = counters(store), 0  # the lookup_many requests before these
    assert c.lookup_many(ns, prompts) == want  # first: every prompt's tokens
    assert c.lookup_many(ns, prompts) == want  # then: digests alone
    assert c.lookup_many(ns, prompts[3:] + [tokens_for(99, 2)]) == want[3:] + [0]
    (a1, s1), (a2, s2), (a3, s3) = seen.since(mark, 3)
    assert a1["carried"] == b"\x01" * len(prompts) and s1 == [len(p) * 4 for p in prompts]
    assert a2["carried"] == b"\x00" * len(prompts) and s2 == []
    assert a2["digests"] == b"".join(digest(p) for p in prompts)
    assert a3["carried"] == b"\x00" * (len(prompts) - 3) + b"\x01" and s3 == [32 * 4]
    # the lookup counters moved as single lookups of the same prompts move them
    batch = counters(store)
    for p in prompts + prompts + prompts[3:] + [tokens_for(99, 2)]:
        c.lookup(ns, p)
    after = counters(store)
    assert (after[0] - batch[0], after[1] - batch[1]) == (batch[0] - before[0],
                                                          batch[1] - before[1])


def test_the_asyncio_connection_has_its_own_memo(daemon, connect, seen):
    """The asyncio twins' connection opens on its first call: that one is plain (the
    daemon's memo bound comes with the hello), then tokens once, then digests."""
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 4)
    mark = 0
    assert c.lookup_many(ns, prompts) == want
    for _ in range(3):
        assert asyncio.run(c.alookup_many(ns, prompts)) == want
    if c.aops is c.ops:  # ucx: one connection serves both
        want_carried = [b"\x01" * 4] + [b"\x00" * 4] * 3
    else:
        want_carried = [b"\x01" * 4, None, b"\x01" * 4, b"\x00" * 4]
    assert [a.get("carried") for a, _ in seen.since(mark, 4)] == want_carried


def test_a_memo_that_lost_prompts_costs_one_round_trip(daemon, connect, seen):
    """The daemon's memo holds fewer prompts than the client's mirror believes (its bound
    shrank under a connected client: as if evicted): the digests it lacks are
    UNKNOWN_PROMPT, the client sends the request again with every token, once."""
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 8)  # 8 prompts of 48 tokens
    ops = daemon.dispatcher.ops
    ops.limits = dataclasses.replace(ops.limits, max_memo_tokens=100)  # the mirror: 1 Mi
    assert c.lookup_many(ns, prompts) == want  # all carried; the daemon keeps the last two
    served, mark = daemon.dispatcher.requests, 1
    assert c.lookup_many(ns, prompts) == want  # digests, refused, then every token
    assert daemon.dispatcher.requests == served + 2
    assert [a["carried"] for a, _ in seen.since(mark, 2)] == [b"\x00" * 8, b"\x01" * 8]
    ops.limits = dataclasses.replace(ops.limits, max_memo_tokens=Limits().max_memo_tokens)


def test_reconnecting_resets_the_mirror(daemon, connect, seen):
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 4)
    assert c.lookup_many(ns, prompts) == want
    c.conn._drop()  # the connection is lost: its session and memo end with it
    served, mark = daemon.dispatcher.requests, 1
    assert c.lookup_many(ns, prompts) == want
    assert daemon.dispatcher.requests == served + 3  # hello, register, one lookup_many
    ((args, sizes),) = seen.since(mark, 1)
    assert args.get("carried", b"\x01" * 4) == b"\x01" * 4 and len(sizes) == 4  # no refusal


def test_a_daemon_without_the_memo_gets_plain_requests(store, carrier, sockdir):
    """``max_memo_tokens`` 0 (or a daemon that predates it: nothing in its hello's limits):
    the client sends every prompt's tokens, as before the memo."""
    srv = ServerThread(store, [listen_url(carrier, sockdir)],
                       limits=Limits(max_memo_tokens=0)).start()
    c = None
    try:
        srv.dispatcher.observer = seen = Requests()
        c = RemoteStore.connect(srv.urls[0], strict=True, timeout=10.0)
        spec = spec_of()
        ns = c.register(spec)
        prompts, want = cached_batch(c, ns, spec, 4)
        for _ in range(2):
            assert c.lookup_many(ns, prompts) == want
        assert [("digests" in a, len(s)) for a, s in seen.since(0, 2)] == [(False, 4)] * 2
    finally:
        if c is not None:
            c.close()
        srv.stop()


def raw_session(url: str):
    raw = Raw(url)
    assert raw.hello()["status"] == 0
    return raw, raw.request("register", None, {"spec": spec_of().to_dict()})["result"]["ns"]


def memo_args(prompts, carried: bytes) -> dict:
    return {"digests": b"".join(digest(p) for p in prompts), "carried": carried}


def test_the_raw_wire_refuses_what_it_cannot_resolve(daemon, carrier, store):
    if carrier == "ucx":
        pytest.skip("the raw wire client speaks tcp and shm")
    spec = spec_of()
    toks = tokens_for(7, 2)
    store.put(store.register(spec), toks, blocks_for(toks, spec))
    raw, ns = raw_session(daemon.urls[0])
    never = raw.request("lookup_many", ns, memo_args([toks], b"\x00"))  # a digest never sent
    assert never["status"] == ErrorCode.UNKNOWN_PROMPT and "send its tokens" in never["error"]
    for bad in ({"digests": b"\x00" * 15, "carried": b"\x00"},  # not a whole digest
                {"digests": "x" * 16, "carried": b"\x00"},  # not bytes
                {"digests": b"\x00" * 32, "carried": b"\x00"},  # one flag for two digests
                {"digests": b"\x00" * 16, "carried": b"\x01"}):  # carried without a segment
        assert raw.request("lookup_many", ns, bad)["status"] == ErrorCode.INVALID_ARGUMENT
    ok = raw.request("lookup_many", ns, memo_args([toks, toks], b"\x01\x00"), [toks.tobytes()])
    assert ok["status"] == 0 and ok["result"]["tokens"] == [32, 32]  # the connection is kept
    again = raw.request("lookup_many", ns, memo_args([toks[:16], toks], b"\x01\x00"),
                        [toks[:16].tobytes()])
    assert again["result"]["tokens"] == [16, 32]
    # another connection (the same tenant) knows none of this one's digests
    other, ns2 = raw_session(daemon.urls[0])
    assert other.request("lookup_many", ns2, memo_args([toks], b"\x00"))["status"] == \
        ErrorCode.UNKNOWN_PROMPT
    assert raw.request("lookup_many", ns, memo_args([toks], b"\x00"))["result"]["tokens"] == [32]
    other.close()
    raw.close()


def test_resolved_tokens_count_against_max_tokens(store, carrier, sockdir):
    """Digests stand for tokens: a batch whose resolved prompts pass ``max_tokens`` is
    TOO_LARGE (the connection kept), however few tokens it carried."""
    if carrier == "ucx":
        pytest.skip("the raw wire client speaks tcp and shm")
    srv = ServerThread(store, [listen_url(carrier, sockdir)], limits=Limits(max_tokens=100)).start()
    try:
        raw, ns = raw_session(srv.urls[0])
        toks = np.arange(64, dtype=np.uint32)
        sent = raw.request("lookup_many", ns, memo_args([toks], b"\x01"), [toks.tobytes()])
        assert sent["result"]["tokens"] == [0]
        over = raw.request("lookup_many", ns, memo_args([toks, toks], b"\x00\x00"))
        assert over["status"] == ErrorCode.TOO_LARGE
        assert raw.request("ping")["status"] == 0
        raw.close()
    finally:
        srv.stop()


def test_threads_sharing_a_client_get_right_answers(daemon, connect, store):
    """Threads plan on one mirror and their requests reach the daemon in any order (a
    small memo evicts often): every answer is a single lookup's."""
    seed = int(os.environ.get("KVSTORE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"KVSTORE_TEST_SEED={seed}")
    ops = daemon.dispatcher.ops
    ops.limits = dataclasses.replace(ops.limits, max_memo_tokens=200)  # before the hello
    c = connect(strict=True)
    spec = spec_of()
    ns = c.register(spec)
    prompts, want = cached_batch(c, ns, spec, 12)
    wrong: list = []

    def ask(rng) -> None:
        for _ in range(30):
            pick = rng.integers(0, len(prompts), int(rng.integers(1, 6)))
            got = c.lookup_many(ns, [prompts[i] for i in pick])
            if got != [want[i] for i in pick]:
                wrong.append((pick, got))

    threads = [threading.Thread(target=ask, args=(np.random.default_rng(seed + i),))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert c.ops._prompts is not None and c.ops._prompts.max_tokens == 200  # the memo was used


def test_the_memos_of_all_connections_share_one_budget(store, sockdir):
    """Each connection is granted its memo at hello from ``max_memo_tokens_total``: once
    that is spent a new connection gets none (its lookup_many goes plain and answers
    right), and a connection that ends gives its grant back."""
    srv = ServerThread(store, [listen_url("tcp", sockdir)],
                       limits=Limits(max_memo_tokens=1000, max_memo_tokens_total=2500)).start()
    clients = []
    try:
        srv.dispatcher.observer = seen = Requests()
        for _ in range(4):
            c = RemoteStore.connect(srv.urls[0], strict=True, timeout=10.0)
            c.ping()
            clients.append(c)
        grants = [c.conn.hello["limits"]["max_memo_tokens"] for c in clients]
        assert grants == [1000, 1000, 500, 0]
        assert srv.dispatcher.ops.memo_budget.granted == 2500
        spec = spec_of()
        ns = [c.register(spec) for c in clients]
        prompts, want = cached_batch(clients[0], ns[0], spec, 4)
        mark = len(seen.seen)
        for c, n in zip(clients, ns):
            assert c.lookup_many(n, prompts) == want
            assert c.lookup_many(n, prompts) == want
        second = [a for a, _ in seen.since(mark, 8)][1::2]
        assert ["digests" in a for a in second] == [True, True, True, False]
        clients.pop(0).close()  # its 1000 tokens go back to the budget
        assert wait_until(lambda: srv.dispatcher.ops.memo_budget.granted == 1500)
        again = RemoteStore.connect(srv.urls[0], strict=True, timeout=10.0)
        clients.append(again)
        again.ping()
        assert again.conn.hello["limits"]["max_memo_tokens"] == 1000
    finally:
        for c in clients:
            c.close()
        srv.stop()
