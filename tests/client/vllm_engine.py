"""Helpers for the tests that run a real vLLM engine (CPU) with KVStoreConnector.

Not a test module: imported by ``test_vllm_*.py`` after they checked vLLM is
installed. One engine per test module keeps the suite inside its time budget.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

import numpy as np

ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in this process: starts in seconds
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
}
MODEL_ID = "kvstore-local-test"
BLOCK_SIZE = 32  # vLLM block: CPU attention needs a multiple of 32
BLOCK_TOKENS = 256  # store block


def make_llm(model_dir, url: str, dtype: str = "float32", **extra):
    """A CPU ``LLM`` whose KV connector is ours, on ``url``, computing in ``dtype``
    (bfloat16 on a CPU with AMX makes vLLM's attention use its AMX cache layout)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    from vllm import LLM
    from vllm.config import KVTransferConfig

    transfer = KVTransferConfig(
        kv_connector="KVStoreConnector",
        kv_connector_module_path="kvstore.client.vllm_connector",
        kv_role="kv_both",
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={"url": url, "codec": "none", "model_id": MODEL_ID,
                                   "block_tokens": BLOCK_TOKENS, **extra},
    )
    return LLM(model=str(model_dir), kv_transfer_config=transfer, enable_prefix_caching=False,
               block_size=BLOCK_SIZE, max_model_len=2048, max_num_batched_tokens=512,
               dtype=dtype, enforce_eager=True, seed=0)


def shutdown_llm(llm) -> None:
    """Stop the engine and vLLM's process-global connector, so another module can start one."""
    from vllm.distributed.kv_transfer.kv_transfer_state import ensure_kv_transfer_shutdown

    llm.llm_engine.engine_core.shutdown()
    ensure_kv_transfer_shutdown()
    del llm
    gc.collect()


def worker_connector():
    """The worker-side KVStoreConnector of the in-process engine."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    return get_kv_transfer_group()


def prompts(seed: int = 0, prefix_tokens: int = 1100, suffix_tokens: int = 60):
    """A long shared prefix and a request B = prefix + its own suffix (random token ids)."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(3, 8000, prefix_tokens).tolist()
    return prefix, prefix + rng.integers(3, 8000, suffix_tokens).tolist()


@dataclass
class Run:
    token_ids: list[int]
    logprobs: list[dict[int, float]]  # per generated token: top-k token id -> logprob
    num_cached_tokens: int
    seconds: float  # wall time of the generate call


def generate(llm, tokens: list[int], salt: str, max_tokens: int = 4) -> Run:
    """Greedy ``max_tokens`` with top-5 logprobs; ``salt`` keys the request's blocks."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=5, ignore_eos=True)
    start = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": tokens, "cache_salt": salt}], params,
                       use_tqdm=False)[0]
    seconds = time.perf_counter() - start
    completion = out.outputs[0]
    logprobs = [{t: lp.logprob for t, lp in step.items()} for step in completion.logprobs]
    return Run(list(completion.token_ids), logprobs, out.num_cached_tokens or 0, seconds)


def max_logprob_diff(a: Run, b: Run) -> float:
    """Largest |difference| of top-k logprobs; inf if the top-k token sets differ."""
    worst = 0.0
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        if set(x) != set(y):
            return float("inf")
        worst = max(worst, max(abs(x[t] - y[t]) for t in x))
    return worst
