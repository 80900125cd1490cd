"""KVStoreConnector in a real vLLM engine (CPU), embedded store.

Request A computes a long prompt and stores its whole blocks through the
connector; request B shares A's prefix and loads it instead of computing it
(vLLM's own prefix cache is off, so a hit can only come from the store). B
must generate exactly what a full recompute of B generates. A corruption
control loads noise and must change the output, so the test can fail.
Requests carry a ``cache_salt``: a fresh salt is a store miss, which gives the
recompute baseline from the same engine (one engine start per module).
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client.vllm_scheduler import request_extra  # noqa: E402
from kvstore.client.vllm_store import close_shared_client, shared_client  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from tests.client import vllm_engine as ve  # noqa: E402

pytestmark = pytest.mark.integration

URL = "embedded"
HIT = 1024  # whole store blocks of the 1100-token prefix


class _Salted:
    def __init__(self, salt):
        self.cache_salt = salt


def extra(salt: str) -> bytes:
    return request_extra(_Salted(salt))


@pytest.fixture(scope="module")
def llm(local_model_dir):
    engine = ve.make_llm(local_model_dir, URL)
    ve.generate(engine, list(range(3, 603)), salt="warm-up", max_tokens=1)  # first-run costs
    yield engine
    ve.shutdown_llm(engine)
    close_shared_client(URL)


@pytest.fixture(scope="module")
def namespace(llm):
    """The engine's namespace, opened through the client the connector shares."""
    layout = KVLayout(ve.MODEL_ID, num_layers=8, num_kv_heads=4, head_dim=64, dtype="float32",
                      block_tokens=ve.BLOCK_TOKENS)
    return shared_client(URL).namespace(layout, codec="none")


@pytest.fixture(scope="module")
def prompts():
    return ve.prompts(seed=0)


@pytest.fixture(scope="module")
def recompute_b(llm, prompts):
    """B computed in full (a salt nothing was stored under)."""
    run = ve.generate(llm, prompts[1], salt="recompute")
    assert run.num_cached_tokens == 0
    return run


@pytest.fixture(scope="module")
def stored_a(llm, prompts, namespace):
    """Request A (the prefix and a short tail of its own, one output token) stored under "a"."""
    prefix, _ = prompts
    assert namespace.lookup(prefix, extra("a")) == 0
    return ve.generate(llm, prefix + [7, 8, 9], salt="a", max_tokens=1)


def test_a_stores_its_whole_blocks(stored_a, prompts, namespace):
    prefix, _ = prompts
    assert namespace.lookup(prefix, extra("a")) == HIT
    assert namespace.lookup(prefix, extra("other")) == 0  # the salt keys the blocks


def test_b_loads_the_prefix_and_matches_recompute(llm, stored_a, recompute_b, prompts):
    stats = ve.worker_connector().worker.stats
    loaded = stats.loaded_tokens
    hit = ve.generate(llm, prompts[1], salt="a")
    assert hit.num_cached_tokens == HIT  # vLLM counted the store's tokens as computed
    assert stats.loaded_tokens - loaded == HIT and stats.failed_blocks == 0
    assert hit.token_ids == recompute_b.token_ids
    assert ve.max_logprob_diff(hit, recompute_b) <= 1e-5


def test_stored_kv_is_the_models_kv(stored_a, prompts, namespace, local_model_dir):
    """The gathered cache equals transformers' own keys/values of the same tokens."""
    from transformers import AutoModelForCausalLM

    from kvstore.client.hf_adapter import cache_to_canonical

    prefix, _ = prompts
    n, kv = namespace.get(prefix, extra("a"))
    assert n == HIT
    model = AutoModelForCausalLM.from_pretrained(local_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        cache = model(torch.tensor([prefix[:HIT]]), use_cache=True).past_key_values
    want = cache_to_canonical(cache)
    assert kv.shape == want.shape
    torch.testing.assert_close(kv, want, atol=1e-4, rtol=1e-4)  # measured: 4.3e-6


def test_corrupted_blocks_change_the_output(llm, stored_a, recompute_b, prompts, namespace):
    """Control: B over noisy blocks (written through the client) must differ."""
    prefix, b = prompts
    n, kv = namespace.get(prefix, extra("a"))
    noisy = kv + torch.randn_like(kv) * kv.std()
    assert namespace.put(prefix, noisy, extra("noisy")) == HIT
    bad = ve.generate(llm, b, salt="noisy")
    assert bad.num_cached_tokens == HIT
    assert ve.max_logprob_diff(bad, recompute_b) > 0.05


def test_ttft_miss_vs_hit(llm, stored_a, prompts, record_property):
    """TTFT (one output token) of A computing and storing vs B loading; reported, not asserted."""
    prefix, b = prompts
    miss = stored_a
    hit = ve.generate(llm, b, salt="a", max_tokens=1)
    assert miss.num_cached_tokens == 0 and hit.num_cached_tokens == HIT
    stats = ve.worker_connector().worker.stats
    record_property("ttft_miss_s", miss.seconds)
    record_property("ttft_hit_s", hit.seconds)
    print(f"\nvLLM TTFT: A (miss, {len(prefix) + 3} tokens, stores) {miss.seconds:.3f}s;"
          f" B (hit {HIT}/{len(b)} tokens) {hit.seconds:.3f}s;"
          f" x{miss.seconds / hit.seconds:.1f}; connector totals so far: saves"
          f" {stats.saved_tokens} tokens in {stats.save_seconds:.3f}s, loads"
          f" {stats.loaded_tokens} tokens in {stats.load_seconds:.3f}s")
