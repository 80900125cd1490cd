"""A two-turn chat through a real vLLM engine (CPU) with KVStoreConnector: save_decode and hints.

Turn 1 computes a prompt and generates an answer; turn 2's prompt is turn
1's prompt + the answer + a new question. With ``save_decode`` (the default)
the connector stored the whole blocks of prompt + answer, so turn 2 loads
everything up to the new question; with it off (per request) only turn 1's
prompt blocks hit. A request's ``session_end`` hint reaches the store when it
finishes. Requests carry a ``cache_salt`` so that each test has its own blocks.
"""

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client.vllm_scheduler import request_extra  # noqa: E402
from kvstore.client.vllm_store import close_shared_client, shared_client  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from kvstore.store_api import PrefixHint  # noqa: E402
from tests.client import vllm_engine as ve  # noqa: E402

pytestmark = pytest.mark.integration  # a real vLLM engine (tests/markers.py)

URL = "embedded"
PROMPT, ANSWER, QUESTION = 712, 60, 30  # turn 1's prompt: 2 whole blocks; + answer: 3
BT = ve.BLOCK_TOKENS


class _Salted:
    def __init__(self, salt):
        self.cache_salt = salt


def extra(salt: str) -> bytes:
    return request_extra(_Salted(salt))


@pytest.fixture(scope="module")
def llm(local_model_dir):
    engine = ve.make_llm(local_model_dir, URL)
    yield engine
    ve.shutdown_llm(engine)
    close_shared_client(URL)


@pytest.fixture(scope="module")
def namespace(llm):
    layout = KVLayout(ve.MODEL_ID, num_layers=8, num_kv_heads=4, head_dim=64, dtype="float32",
                      block_tokens=BT)
    return shared_client(URL).namespace(layout, codec="none")


def generate(llm, tokens, salt, max_tokens, **kvstore):
    """Greedy, ``ignore_eos``; ``kvstore``: the request's ``kv_transfer_params["kvstore"]``."""
    from vllm import SamplingParams

    extra_args = {"kv_transfer_params": {"kvstore": kvstore}} if kvstore else None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=5, ignore_eos=True,
                            extra_args=extra_args)
    out = llm.generate([{"prompt_token_ids": list(tokens), "cache_salt": salt}], params,
                       use_tqdm=False)[0]
    completion = out.outputs[0]
    logprobs = [{t: lp.logprob for t, lp in step.items()} for step in completion.logprobs]
    return ve.Run(list(completion.token_ids), logprobs, out.num_cached_tokens or 0, 0.0)


def chat(seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(3, 8000, PROMPT).tolist(), rng.integers(3, 8000, QUESTION).tolist()


def test_turn_two_loads_everything_up_to_the_new_question(llm, namespace):
    prompt, question = chat(1)
    turn1 = generate(llm, prompt, "chat", ANSWER)
    assert len(turn1.token_ids) == ANSWER
    history = prompt + turn1.token_ids  # 772 tokens: 3 whole blocks, KV of all but the last
    assert namespace.lookup(history, extra("chat")) == 3 * BT
    turn2_prompt = history + question
    recompute = generate(llm, turn2_prompt, "chat-recompute", 4)
    assert recompute.num_cached_tokens == 0
    turn2 = generate(llm, turn2_prompt, "chat", 4)
    assert turn2.num_cached_tokens == 3 * BT  # every whole block before the question
    assert turn2.token_ids == recompute.token_ids
    # decode-time KV vs prefill-time KV of the answer: equal up to float rounding
    assert ve.max_logprob_diff(turn2, recompute) <= 1e-3


def test_without_save_decode_only_the_prompt_blocks_hit(llm, namespace):
    prompt, question = chat(2)
    turn1 = generate(llm, prompt, "prompt-only", ANSWER, save_decode=False)
    history = prompt + turn1.token_ids
    assert namespace.lookup(history, extra("prompt-only")) == 2 * BT
    turn2 = generate(llm, history + question, "prompt-only", 1)
    assert turn2.num_cached_tokens == 2 * BT


def test_a_session_end_hint_reaches_the_store_when_the_request_finishes(llm, namespace):
    store = namespace.backend  # the engine's embedded TieredStore
    told = []
    hint = store.hint

    def spy(ns, tokens, h, extra=b""):
        told.append((ns, list(tokens), h, extra, hint(ns, tokens, h, extra)))
        return told[-1][-1]

    store.hint = spy
    try:
        prompt, _ = chat(3)
        turn = generate(llm, prompt, "ending", 8, session_end=True)
        plain = generate(llm, chat(4)[0], "plain", 4)
    finally:
        del store.hint
    assert plain.token_ids  # a request without a hint sends none
    ((ns, tokens, h, salt, applied),) = told
    assert ns == namespace.id and salt == extra("ending")
    assert tokens == prompt + turn.token_ids and h == PrefixHint(session_end=True)
    assert applied == 2 * BT  # prompt + answer = 720 tokens: the two whole blocks it stored
    assert namespace.lookup(prompt, extra("ending")) == 2 * BT  # a hint drops nothing by itself
