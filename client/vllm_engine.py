"""A vLLM engine in this process with ``KVStoreConnector``, timed request by request.

What the demo (``make demo ENGINE=vllm``) and ``benchmarks.ttft`` measure:
the time to first token of a prompt through a real vLLM ``LLM`` (CPU build,
in-process engine) whose KV connector is ours on a given store URL, with
vLLM's own prefix cache off, so a prefix can only come from the store.

Each ``first_token`` is one request with ``max_tokens=1``: its wall time is
the TTFT an offline user of ``LLM.generate`` sees (scheduling, the connector's
lookup and load, the forward of what is not cached, sampling). A request may
switch the store off for itself (``load=False, store=False``: a plain
recompute, the baseline) through ``kv_transfer_params``; ``salt`` is vLLM's
``cache_salt``, which keys the stored blocks, so a fresh salt is a miss.

    engine = VLLMEngine(model_dir, "shm:///tmp/kv.sock", codec="none")
    miss = engine.first_token(prompt, load=False, store=False)
    engine.first_token(prompt, salt="a")            # computes and stores
    hit = engine.first_token(prompt, salt="a")      # loads the prefix
    engine.close()

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``);
``ENV`` holds the defaults it sets when the caller has not.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field

ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in this process: starts in seconds
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's start-up warnings would bury the results
}


@dataclass(frozen=True)
class VLLMFirstToken:
    """Outcome of one request's prefill through vLLM."""

    ttft_s: float
    token_id: int
    logprobs: dict[int, float]  # top-k next-token log-probabilities (token id -> logprob)
    tokens_reused: int  # prompt tokens vLLM took as computed: the store's, here


@dataclass(frozen=True)
class VLLMSettings:
    """The engine and connector settings that matter to the measurement."""

    url: str
    codec: str = "none"
    model_id: str = "kvstore-local"
    block_tokens: int = 256  # store block
    block_size: int = 32  # vLLM block (CPU attention: a multiple of 32)
    max_model_len: int = 8448
    max_num_batched_tokens: int | None = None  # vLLM's default chunk
    logprobs: int = 20
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)  # more kv_connector_extra_config keys


class VLLMEngine:
    def __init__(self, model_dir, settings: VLLMSettings):
        for key, value in ENV.items():
            os.environ.setdefault(key, value)
        from vllm import LLM
        from vllm.config import KVTransferConfig

        self.settings = s = settings
        transfer = KVTransferConfig(
            kv_connector="KVStoreConnector",
            kv_connector_module_path="kvstore.client.vllm_connector",
            kv_role="kv_both",
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={"url": s.url, "codec": s.codec, "model_id": s.model_id,
                                       "block_tokens": s.block_tokens, **s.extra},
        )
        kwargs = {}
        if s.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = s.max_num_batched_tokens
        self.llm = LLM(model=str(model_dir), kv_transfer_config=transfer,
                       enable_prefix_caching=False, block_size=s.block_size,
                       max_model_len=s.max_model_len, dtype=s.dtype, enforce_eager=True, seed=0,
                       max_logprobs=max(s.logprobs, 20), **kwargs)

    def first_token(self, tokens: list[int], salt: str = "", load: bool = True,
                    store: bool = True) -> VLLMFirstToken:
        """One greedy token for ``tokens``; ``load``/``store`` switch the store off for it."""
        from vllm import SamplingParams

        extra = {"kv_transfer_params": {"kvstore": {"load": load, "save": store}}}
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.settings.logprobs,
                                ignore_eos=True, extra_args=extra)
        prompt = {"prompt_token_ids": list(tokens)}
        if salt:
            prompt["cache_salt"] = salt
        start = time.perf_counter()
        out = self.llm.generate([prompt], params, use_tqdm=False)[0]
        seconds = time.perf_counter() - start
        completion = out.outputs[0]
        step = completion.logprobs[0]
        return VLLMFirstToken(seconds, int(completion.token_ids[0]),
                              {int(t): float(lp.logprob) for t, lp in step.items()},
                              int(out.num_cached_tokens or 0))

    def namespace(self):
        """The store namespace the engine's connector uses (``Namespace`` of kvstore.client)."""
        from vllm.distributed.kv_transfer import get_kv_transfer_group

        return get_kv_transfer_group().namespace

    def connector_stats(self):
        """The worker connector's ``TransferStats`` (tokens and seconds loaded and saved)."""
        from vllm.distributed.kv_transfer import get_kv_transfer_group

        return get_kv_transfer_group().worker.stats

    def close(self) -> None:
        """Stop the engine and vLLM's process-global connector (another engine may start)."""
        from vllm.distributed.kv_transfer.kv_transfer_state import ensure_kv_transfer_shutdown

        from kvstore.client.vllm_store import close_shared_client

        self.llm.llm_engine.engine_core.shutdown()
        ensure_kv_transfer_shutdown()
        close_shared_client(self.settings.url)
        del self.llm
        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def logprob_diff(a: VLLMFirstToken, b: VLLMFirstToken) -> float:
    """Largest |difference| of the logprobs of tokens in both top-k sets (inf if none shared)."""
    shared = set(a.logprobs) & set(b.logprobs)
    if not shared:
        return float("inf")
    return max(abs(a.logprobs[t] - b.logprobs[t]) for t in shared)
