"""The scheduler side's lookups: N waiting requests cost at most two round trips a step.

Against a store served over loopback tcp (an in-process server thread), the
daemon's request counter counts the round trips: the first waiting request
of a step is looked up at once, the others get None (vLLM asks again next
step) and one ``lookup_many`` at the step's end answers them all. Without
``batch_lookups`` each request is a round trip of its own.
"""

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from kvstore.availability import SoftFailures

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.vllm_lookups import StepLookups  # noqa: E402
from kvstore.client.vllm_scheduler import SchedulerSide  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from kvstore.store.config import StoreConfig  # noqa: E402
from kvstore.store.tiered_store import TieredStore  # noqa: E402
from kvstore.transport.server import ServerThread  # noqa: E402
from tests.client.test_vllm_sides import BS, BT, D, H, L, step  # noqa: E402

N = 24  # waiting requests


def request(i: int, cached_blocks: int):
    prompt = list(range(i * 10_000, i * 10_000 + 3 * BT + 5))
    return SimpleNamespace(request_id=f"r{i}", prompt_token_ids=prompt, cache_salt=None,
                           lora_request=None, mm_features=[], all_token_ids=list(prompt),
                           num_computed_tokens=0, kv_transfer_params=None), cached_blocks


@pytest.fixture
def served():
    store = TieredStore(StoreConfig(cpu_bytes="64MiB"))
    srv = ServerThread(store, ["tcp://127.0.0.1:0"]).start()
    client = KVClient.connect(srv.urls[0], strict=True, timeout=10)
    ns = client.namespace(KVLayout("lookups", L, H, D, "float32", block_tokens=BT))
    reqs = []
    for i in range(N):
        req, cached = request(i, i % 4)  # 0..3 of its 3 whole blocks cached
        toks = np.array(req.prompt_token_ids[: cached * BT], dtype=np.uint32)
        if cached:
            block = np.zeros(ns.spec.block_bytes, dtype=np.uint8)
            assert ns.put_blocks(toks, [block] * cached) == cached * BT
        reqs.append((req, cached * BT))
    yield srv, ns, reqs
    client.close()
    srv.stop()
    store.close()


def test_one_step_of_waiting_requests_is_two_round_trips(served):
    srv, ns, reqs = served
    side = SchedulerSide(ns, BS, BT, load=True, save=True, batch_lookups=True)
    before = srv.dispatcher.requests
    first = [side.lookup(req, 0) for req, _ in reqs]  # step 1: vLLM asks for each
    assert first[0] == reqs[0][1] and first[1:] == [None] * (N - 1)
    side.build_meta(step())  # the step ends: one lookup_many for the N - 1 others
    assert srv.dispatcher.requests - before == 2
    answers = [side.lookup(req, 0) for req, _ in reqs]  # step 2: every answer is there
    assert answers == [want for _, want in reqs]
    assert srv.dispatcher.requests - before == 2  # no round trip more


def test_without_batching_a_round_trip_each(served):
    srv, ns, reqs = served
    side = SchedulerSide(ns, BS, BT, load=True, save=True, batch_lookups=False)
    before = srv.dispatcher.requests
    assert [side.lookup(req, 0) for req, _ in reqs] == [want for _, want in reqs]
    assert srv.dispatcher.requests - before == N


def test_answers_are_spent_when_scheduled_and_expire(served):
    srv, ns, reqs = served
    side = SchedulerSide(ns, BS, BT, load=True, save=True, batch_lookups=True)
    (a, want_a), (b, want_b) = reqs[1], reqs[2]
    assert side.lookup(a, 0) == want_a and side.lookup(b, 0) is None
    side.build_meta(step())
    side.after_alloc(a, [0, 1, 2, 3, 4, 5, 6], want_a)  # a is scheduled: its answer is spent
    before = srv.dispatcher.requests
    assert side.lookup(a, 0) == want_a  # asked again (a preempted request): a fresh lookup
    assert srv.dispatcher.requests == before + 1
    side.lookups.max_age = 0.0  # b waited too long: its answer is stale
    side.build_meta(step())  # purges it
    assert side.lookup(b, 0) == want_b
    assert srv.dispatcher.requests == before + 2


def test_a_failed_batch_is_misses_unless_strict():
    class Broken:
        availability = SoftFailures(False, "broken")

        def lookup(self, tokens, extra):
            raise ConnectionError("down")

        def lookup_many(self, tokens_list, extras):
            raise ConnectionError("down")

    soft = StepLookups(Broken())
    assert soft.hit("a", np.arange(4, dtype=np.uint32), b"") == 0
    assert soft.hit("b", np.arange(4, dtype=np.uint32), b"") is None
    soft.end_step()
    assert soft.hit("b", np.arange(4, dtype=np.uint32), b"") == 0
    strict = StepLookups(Broken(), strict=True)
    with pytest.raises(ConnectionError):
        strict.hit("a", np.arange(4, dtype=np.uint32), b"")
