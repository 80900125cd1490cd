"""save_decode and hints in the connector's two halves, without an engine (vLLM-shaped inputs).

Decode steps save each whole store block of prompt + output as it completes;
a request that finishes with a whole block no step could save keeps its
blocks (request_finished: True) until the next step's last save, which the
worker reports (get_finished); a request's hint reaches the store when it
finishes, after that save.
"""

import importlib.util
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.vllm_meta import KVStoreConnectorMetadata  # noqa: E402
from kvstore.client.vllm_scheduler import SchedulerSide, request_options  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from kvstore.store_api import PrefixHint  # noqa: E402
from tests.client.test_vllm_sides import BS, BT, D, H, L, make_worker, step  # noqa: E402


@pytest.fixture
def ns():
    with KVClient.connect("embedded", cpu_bytes="64MiB") as client:
        yield client.namespace(KVLayout("decode", L, H, D, "float32", block_tokens=BT))


class Req(SimpleNamespace):
    """The fields of vLLM's Request the connector reads; ``all_token_ids`` grows."""

    def __init__(self, req_id, prompt, **params):
        super().__init__(request_id=req_id, prompt_token_ids=list(prompt), cache_salt=None,
                         lora_request=None, mm_features=[], all_token_ids=list(prompt),
                         num_computed_tokens=0, num_in_flight_tokens=0,
                         kv_transfer_params={"kvstore": params} if params else None)


class Spy:
    """A namespace stand-in that records hints."""

    def __init__(self):
        self.hints = []

    def hint(self, tokens, **kw):
        self.hints.append((list(tokens), kw))
        return len(tokens)


def prefill(side, req, blocks):
    """Lookup, alloc and one prefill step of the whole prompt; returns the step's meta."""
    side.lookup(req, 0)
    side.after_alloc(req, blocks, 0)
    n = len(req.prompt_token_ids)
    meta = side.build_meta(step(new=[(req.request_id, blocks, 0)], scheduled={req.request_id: n}))
    req.num_computed_tokens = n
    req.all_token_ids.append(1000)  # the first generated token
    return meta


def decode(side, req, new_blocks=None):
    """One decode step: the last generated token's KV is computed, a new token sampled."""
    meta = side.build_meta(step(cached=[(req.request_id, new_blocks, req.num_computed_tokens)],
                                scheduled={req.request_id: 1}))
    req.num_computed_tokens += 1
    req.all_token_ids.append(1000 + len(req.all_token_ids))
    return meta


def test_decode_steps_save_each_whole_block_of_prompt_and_output(ns):
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    req = Req("r", np.arange(2 * BT + 10))
    blocks = [1, 2, 3, 4, 5]
    (save,) = prefill(side, req, blocks).saves
    assert len(save.tokens) == 2 * BT
    saves = []
    for _ in range(BT):  # 64 decode steps: the third store block completes
        new = ([6],) if req.num_computed_tokens == 5 * BS else None
        saves += decode(side, req, new).saves
    (save,) = saves
    assert len(save.tokens) == 3 * BT and save.stored_before == 2 * BT
    assert list(save.tokens) == req.all_token_ids[: 3 * BT]  # prompt + generated tokens
    assert save.block_ids == [1, 2, 3, 4, 5, 6] and not save.last
    req.num_computed_tokens = len(req.all_token_ids) - 1
    assert side.finished(req, blocks + [6]) is False  # all saved: vLLM frees at once


@pytest.mark.parametrize("off", ["request", "connector"])
def test_save_decode_off_stores_the_prompt_only(ns, off):
    side = SchedulerSide(ns, BS, BT, load=True, save=True, save_decode=off != "connector")
    req = Req("r", np.arange(2 * BT + 10), **({"save_decode": False} if off == "request" else {}))
    assert len(prefill(side, req, [1, 2, 3, 4, 5]).saves) == 1
    saves = []
    for _ in range(BT):
        saves += decode(side, req, ([6],) if req.num_computed_tokens == 5 * BS else None).saves
    assert saves == []
    assert side.finished(req, [1, 2, 3, 4, 5, 6]) is False


def test_a_block_no_step_could_save_is_saved_before_vllm_frees_it(ns):
    """Async scheduling: a step's ``all_token_ids`` lag one token behind what it computes,
    so the block completed by the last step is saved after the request finished."""
    side = SchedulerSide(ns, BS, BT, load=True, save=True, hint_namespaces=[spy := Spy()])
    req = Req("r", np.arange(3 * BT - 1), session_end=True)
    blocks = [1, 2, 3, 4, 5, 6]
    (save,) = prefill(side, req, blocks).saves
    assert len(save.tokens) == 2 * BT
    req.all_token_ids.pop()  # the first token is still a placeholder when the next step runs
    assert decode(side, req).saves == []  # computes token 3*BT-1, but cannot name it yet
    req.all_token_ids.append(7)  # the stop token arrives: the request is done
    assert req.num_computed_tokens == 3 * BT
    assert side.finished(req, blocks) is True  # keep the blocks for one more save
    assert spy.hints == []  # the hint waits for that save
    meta = side.build_meta(step())  # the next step: nothing scheduled, the last save
    (last,) = meta.saves
    assert last.last and len(last.tokens) == 3 * BT and last.block_ids == blocks
    assert last.stored_before == 2 * BT
    assert side.build_meta(step()).saves == []  # once only

    worker = make_worker(ns)
    for cache in worker.caches:
        cache.copy_(torch.randn_like(cache))
    worker.flush_saves(meta)
    assert ns.lookup(np.array(req.all_token_ids)) == 3 * BT
    assert worker.take_saved() == {"r"} and worker.take_saved() == set()
    side.saved({"r"})  # update_connector_output(finished_sending)
    assert spy.hints == [(req.all_token_ids, {"session_end": True, "keep_until": None,
                                              "priority": 0, "extra": b""})]


def test_the_hint_goes_to_every_ranks_namespace_when_the_request_finishes(ns):
    ranks = [Spy(), Spy()]
    side = SchedulerSide(ns, BS, BT, load=True, save=True, hint_namespaces=ranks)
    req = Req("r", np.arange(BT + 5), keep_until=30, priority=2)
    prefill(side, req, [1, 2, 3])
    decode(side, req)
    assert side.finished(req, [1, 2, 3]) is False
    want = [(req.all_token_ids, {"session_end": False, "keep_until": 30.0, "priority": 2,
                                 "extra": b""})]
    assert ranks[0].hints == want and ranks[1].hints == want
    side.finished(Req("plain", np.arange(BT + 5)), [7])  # no hint asked: none sent
    assert ranks[0].hints == want


def test_hint_options_and_a_malformed_hint_is_ignored(caplog):
    assert request_options(Req("r", [1])).hint is None
    assert request_options(Req("r", [1], load=False)).hint is None
    assert request_options(Req("r", [1], session_end=True)).hint == PrefixHint(session_end=True)
    opts = request_options(Req("r", [1], keep_until=5, priority="3", save_decode=False))
    assert opts.hint == PrefixHint(keep_until=5.0, priority=3) and not opts.save_decode
    with caplog.at_level(logging.WARNING):
        assert request_options(Req("r", [1], keep_until=-2)).hint is None
    assert "ignoring the hint" in caplog.text


def test_a_failing_store_never_fails_the_request(ns):
    class Broken:
        def hint(self, tokens, **kw):
            raise RuntimeError("store down")

    side = SchedulerSide(ns, BS, BT, load=True, save=True, hint_namespaces=[Broken()])
    req = Req("r", np.arange(BT + 5), session_end=True)
    prefill(side, req, [1, 2, 3])
    assert side.finished(req, [1, 2, 3]) is False
    strict = SchedulerSide(ns, BS, BT, load=True, save=True, strict=True,
                           hint_namespaces=[Broken()])
    with pytest.raises(RuntimeError):
        strict.finished(Req("s", np.arange(4), session_end=True), [])


def test_worker_reports_only_last_saves(ns):
    worker = make_worker(ns)
    assert worker.take_saved() == set()
    worker.flush_saves(KVStoreConnectorMetadata())
    assert worker.take_saved() == set()
