"""The demo's two requests over one carrier, through transformers or through vLLM.

Request A (a long shared prefix and a question) misses and stores its whole
blocks; request B (the same prefix, another question) loads the prefix and
computes only its question; B recomputed with the store switched off is the
reference for TTFT and for the next token's logprobs. B and the recompute
run twice each and the faster of each is shown (the development machine is
shared: one slow run should not decide the table). Both functions return
one ``DemoRow`` (``kvstore.demo`` prints them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MODEL_ID = "kvstore-demo-llama"


@dataclass(frozen=True)
class DemoRow:
    carrier: str
    codec: str
    prompt_tokens: int  # of request B
    ttft_miss_s: float  # B recomputed (best of the repeats)
    ttft_hit_s: float  # B with the prefix loaded from the daemon (best of the repeats)
    speedup: float
    tokens_reused: int
    stored_by_A: int  # noqa: N815 (the column's name)
    max_logprob_diff: float
    same_first_token: bool

    def to_dict(self) -> dict:
        return asdict(self)


def run_hf(url: str, model, prefix: list[int], suffixes, codec: str, repeat: int = 2,
           cleanup: bool = False) -> DemoRow:
    """A, B and B recomputed through ``HFEngine`` with a client of ``url``.

    B and its recompute run ``repeat`` times each (best kept: the machine may
    be busy with other work). ``cleanup`` deletes A's blocks at the end, so
    that the next carrier's A (the same daemon) misses too.
    """
    import torch

    from kvstore.client import KVClient
    from kvstore.client.hf_adapter import layout_for_model
    from kvstore.client.hf_engine import HFEngine

    layout = layout_for_model(model.config, MODEL_ID, block_tokens=256, dtype=torch.float32)
    prompt_b = prefix + suffixes[1]
    with KVClient.connect(url) as client:
        ns = client.namespace(layout, codec=codec)
        engine = HFEngine(model, ns, MODEL_ID, block_tokens=256, adaptive=False)
        a = engine.first_token(prefix + suffixes[0])  # miss: computes and stores
        hits = [engine.first_token(prompt_b, store=False) for _ in range(repeat)]
        refs = [engine.first_token(prompt_b, store=False, load=False) for _ in range(repeat)]
        if cleanup:
            ns.delete(prefix)
    b, ref = min(hits, key=_ttft), min(refs, key=_ttft)
    return DemoRow(url.split("://")[0], codec, len(prompt_b), ref.ttft_s, b.ttft_s,
                   ref.ttft_s / b.ttft_s, b.tokens_reused, a.tokens_stored,
                   float(max((h.logprobs - ref.logprobs).abs().max() for h in hits)),
                   all(h.token_id == ref.token_id for h in hits))


def run_vllm(url: str, model_dir, prefix: list[int], suffixes, codec: str,
             repeat: int = 2, cleanup: bool = False) -> DemoRow:
    """A, B and B recomputed through a vLLM engine whose connector uses ``url`` (as ``run_hf``)."""
    from types import SimpleNamespace

    from kvstore.client.vllm_engine import VLLMEngine, VLLMSettings, logprob_diff
    from kvstore.client.vllm_scheduler import request_extra

    prompt_b = prefix + suffixes[1]
    longest = max(len(prefix) + len(s) for s in suffixes)
    settings = VLLMSettings(url=url, codec=codec, model_id=MODEL_ID,
                            max_model_len=-(-(longest + 16) // 32) * 32)
    with VLLMEngine(model_dir, settings) as engine:
        engine.first_token(prefix[:300], load=False, store=False)  # first-call costs
        stats = engine.connector_stats()
        saved = stats.saved_tokens
        engine.first_token(prefix + suffixes[0], salt="demo")  # A: miss, computes and stores
        stored = stats.saved_tokens - saved
        hits = [engine.first_token(prompt_b, salt="demo", store=False) for _ in range(repeat)]
        refs = [engine.first_token(prompt_b, load=False, store=False) for _ in range(repeat)]
        if cleanup:
            engine.namespace().delete(prefix, request_extra(SimpleNamespace(cache_salt="demo")))
    b, ref = min(hits, key=_ttft), min(refs, key=_ttft)
    return DemoRow(url.split("://")[0], codec, len(prompt_b), ref.ttft_s, b.ttft_s,
                   ref.ttft_s / b.ttft_s, b.tokens_reused, stored,
                   max(logprob_diff(h, ref) for h in hits),
                   all(h.token_id == ref.token_id for h in hits))


def _ttft(result) -> float:
    return result.ttft_s
