"""The connector's two halves without an engine: a real embedded store, vLLM-shaped inputs.

Scheduler: never the whole prompt, saves under chunked prefill, loads after
alloc, preemption. Worker: a prefix that shrank between lookup and load loads
what is left and reports the rest as load errors; saves round-trip.
"""

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.vllm_meta import KVStoreConnectorMetadata, LoadSpec, SaveSpec  # noqa: E402
from kvstore.client.vllm_scheduler import SchedulerSide  # noqa: E402
from kvstore.client.vllm_settings import EngineGeometry  # noqa: E402
from kvstore.client.vllm_worker import WorkerSide  # noqa: E402
from kvstore.kernels import EngineKind, EngineLayout  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from tests.kernels.engine_caches import read_cache  # noqa: E402

pytestmark = pytest.mark.integration

BS, BT, L, H, D = 32, 64, 2, 2, 32  # vLLM block, store block, layers, kv heads, head dim


@pytest.fixture
def ns():
    with KVClient.connect("embedded", cpu_bytes="64MiB") as client:
        yield client.namespace(KVLayout("sides", L, H, D, "float32", block_tokens=BT))


def request(req_id, tokens, salt=None):
    return SimpleNamespace(request_id=req_id, prompt_token_ids=list(tokens), cache_salt=salt,
                           lora_request=None, mm_features=[])


def step(new=(), cached=(), scheduled=None):
    """A SchedulerOutput with the fields the connector reads."""
    cached = list(cached)
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=r, block_ids=(b,), num_computed_tokens=c)
                            for r, b, c in new],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[c[0] for c in cached], new_block_ids=[c[1] for c in cached],
            num_computed_tokens=[c[2] for c in cached],
            resumed_req_ids={c[0] for c in cached if len(c) > 3 and c[3]}),
        num_scheduled_tokens=scheduled or {})


def kv_for(n_tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, 2, n_tokens, H, D, generator=g)


def test_lookup_leaves_one_token_to_compute(ns):
    tokens = np.arange(2 * BT)
    ns.put(tokens, kv_for(2 * BT))
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    assert side.lookup(request("r", tokens), 0) == BT  # not 2*BT: the prompt is all cached
    assert side.lookup(request("r", np.arange(2 * BT + 1)), 0) == 2 * BT
    assert side.lookup(request("r", np.arange(2 * BT + 1)), BT) == BT  # beyond local hits
    assert side.lookup(request("r", np.arange(2 * BT + 1), salt="x"), 0) == 0


def test_chunked_prefill_saves_each_new_whole_block_once(ns):
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    req = request("r", np.arange(150))
    assert side.lookup(req, 0) == 0
    side.after_alloc(req, [4, 5], 0)
    meta = side.build_meta(step(new=[("r", [4, 5], 0)], scheduled={"r": 60}))
    assert meta.saves == [] and meta.loads == []  # 60 tokens: no whole store block yet
    meta = side.build_meta(step(cached=[("r", ([6, 7],), 60)], scheduled={"r": 60}))
    (save,) = meta.saves
    assert len(save.tokens) == BT and save.block_ids == [4, 5] and save.stored_before == 0
    meta = side.build_meta(step(cached=[("r", ([8],), 120)], scheduled={"r": 30}))
    (save,) = meta.saves
    assert len(save.tokens) == 2 * BT and save.block_ids == [4, 5, 6, 7]
    assert save.stored_before == BT
    meta = side.build_meta(step(cached=[("r", None, 150)], scheduled={"r": 1}))
    assert meta.saves == []  # decode: generated tokens are not stored


def test_hit_is_loaded_then_not_saved_again(ns):
    tokens = np.arange(3 * BT)
    ns.put(tokens, kv_for(3 * BT))
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    req = request("r", tokens[: 2 * BT + 10])
    assert side.lookup(req, BS) == 2 * BT - BS  # one vLLM block was a local hit
    side.after_alloc(req, [1, 2, 3, 4, 5], 2 * BT - BS)
    meta = side.build_meta(step(new=[("r", [1, 2, 3, 4, 5], 2 * BT)], scheduled={"r": 10}))
    (load,) = meta.loads
    assert load.skip == BS and len(load.tokens) == 2 * BT and load.block_ids == [1, 2, 3, 4]
    assert meta.saves == []


def test_preempted_request_reloads_into_its_new_blocks(ns):
    tokens = np.arange(2 * BT + 5)
    ns.put(tokens, kv_for(2 * BT))
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    req = request("r", tokens)
    side.after_alloc(req, [1, 2, 3, 4, 5], side.lookup(req, 0))
    side.build_meta(step(new=[("r", [1, 2, 3, 4, 5], 2 * BT)], scheduled={"r": 5}))
    side.after_alloc(req, [9, 8, 7, 6, 5], side.lookup(req, 0))  # preempted, rescheduled
    meta = side.build_meta(step(cached=[("r", ([9, 8, 7, 6, 5],), 2 * BT, True)],
                                scheduled={"r": 5}))
    (load,) = meta.loads
    assert load.block_ids == [9, 8, 7, 6]


def test_load_disabled_never_claims_tokens(ns):
    ns.put(np.arange(2 * BT), kv_for(2 * BT))
    side = SchedulerSide(ns, BS, BT, load=False, save=True)
    assert side.lookup(request("r", np.arange(2 * BT + 1)), 0) == 0


def make_worker(ns, num_blocks=16):
    geometry = EngineGeometry(("l0", "l1"), BS, H, D, torch.float32)
    worker = WorkerSide(ns, geometry, vllm_config=None)
    worker.register({name: torch.zeros(num_blocks, H, BS, 2 * D) for name in ("l0", "l1")})
    worker._engine = EngineLayout.vllm_cpu(BS, "vec")  # no engine to ask for its ISA
    return worker


def gather_blocks(worker, blocks):
    """Canonical [L, 2, len(blocks) * BS, H, D] of engine blocks ``blocks``, read with
    the test's own map of vLLM's vec layout (not the kernels)."""
    layers = [read_cache(EngineKind.VLLM_CPU, cache) for cache in worker.caches]
    return torch.stack([torch.stack([k[blocks].flatten(0, 1), v[blocks].flatten(0, 1)])
                        for k, v in layers])


def test_worker_loads_what_is_left_and_reports_the_rest(ns):
    tokens = np.arange(3 * BT, dtype=np.uint32)
    kv = kv_for(3 * BT)
    ns.put(tokens[: 2 * BT], kv[:, :, : 2 * BT])  # the third block is gone since lookup
    worker = make_worker(ns)
    blocks = [3, 1, 4, 15, 9, 2]
    worker.load(KVStoreConnectorMetadata(loads=[LoadSpec("r", tokens, blocks, skip=BS)]))
    assert worker.take_load_errors() == {9, 2}
    assert worker.take_load_errors() == set()
    got = gather_blocks(worker, blocks[1:4])
    assert torch.equal(got, kv[:, :, BS : 2 * BT])
    assert not worker.caches[0][3].any()  # the skipped (locally cached) block is untouched
    assert worker.stats.loaded_tokens == 2 * BT - BS and worker.stats.failed_blocks == 2


def test_worker_saves_round_trip(ns):
    worker = make_worker(ns)
    for cache in worker.caches:
        cache.copy_(torch.randn_like(cache))
    tokens = np.arange(2 * BT, dtype=np.uint32) + 7
    blocks = [5, 0, 11, 6]
    meta = KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens, blocks)])
    worker.save_layer("l1", worker.caches[1], meta)  # l0 is gathered in wait_for_save
    worker.flush_saves(meta)
    n, kv = ns.get(tokens)
    assert n == 2 * BT and worker.stats.saved_tokens == 2 * BT
    assert torch.equal(kv, gather_blocks(worker, blocks))


def test_a_request_can_switch_load_and_save_off(ns):
    tokens = np.arange(2 * BT + 1)
    ns.put(tokens[:BT], kv_for(BT))
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    off = request("r", tokens)
    off.kv_transfer_params = {"kvstore": {"load": False, "save": False}}
    assert side.lookup(off, 0) == 0  # the store has a block, this request does not want it
    side.after_alloc(off, [1, 2, 3, 4, 5], 0)
    meta = side.build_meta(step(new=[("r", [1, 2, 3, 4, 5], 0)], scheduled={"r": 2 * BT + 1}))
    assert meta.loads == [] and meta.saves == []
    on = request("s", tokens)
    on.kv_transfer_params = {"other_connector": {}}
    assert side.lookup(on, 0) == BT
    side.after_alloc(on, [6, 7, 8, 9, 10], BT)
    meta = side.build_meta(step(new=[("s", [6, 7, 8, 9, 10], BT)], scheduled={"s": BT + 1}))
    assert len(meta.loads) == 1 and len(meta.saves) == 1  # defaults: both directions
