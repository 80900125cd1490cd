"""A minimal transformers serving loop with kvstore prefix caching.

What an engine does with the store, made measurable: for a prompt it

1. asks the store how many leading tokens are cached (``lookup``),
2. asks the retrieval planner whether loading them beats recomputing,
3. loads that prefix (``get``) into a ``DynamicCache`` and prefills only the
   rest, or prefills everything on a miss,
4. picks the first token (TTFT ends here), then stores the prompt's whole
   blocks for the next request (after the first token, as engines do).

``generate`` goes on decoding greedily and stores, once done, the whole
blocks of prompt + output (``save_decode``): the next turn of a chat repeats
both, so it hits through the previous answer.

Both paths use the same KV memory (``KVBuffer``, kept between requests as an
engine's KV pool is): a hit decodes the stored blocks straight into it and
the suffix is appended in place; a miss prefills into it. Both ask the model
for the last position's logits only (``logits_to_keep=1``): the first token
needs no others.

Every request feeds the planner's estimators: prefill time per token count,
and the carrier's get bandwidth.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from kvstore.client.hf_adapter import HFPrefixCache, layout_for_model
from kvstore.client.hf_reserved import KVBuffer
from kvstore.client.retrieval import BandwidthEstimator, PrefillModel, plan_retrieval
from kvstore.store_api import PrefixHint


@dataclass(frozen=True)
class FirstToken:
    """Outcome of one request's prefill."""

    ttft_s: float
    token_id: int
    logprobs: torch.Tensor  # next-token log-probabilities, [vocab], float32
    logits: torch.Tensor  # next-token logits, [vocab], float32
    tokens_reused: int
    tokens_cached: int  # what the store had; reused may be less (the planner said no)
    load_s: float
    store_s: float
    tokens_stored: int


@dataclass(frozen=True)
class Generation:
    """Outcome of one request's generation (``HFEngine.generate``)."""

    first: FirstToken
    token_ids: list[int]  # generated, the first token included
    tokens_stored: int  # leading tokens of prompt (+ output) the store now holds
    store_s: float


class HFEngine:
    def __init__(self, model, namespace, model_id: str, block_tokens: int = 256,
                 adaptive: bool = True, margin: float = 0.25, buffer: KVBuffer | None = None):
        """``buffer``: the KV memory of requests (kept between them); engines that never
        run at the same time (e.g. one per carrier in a benchmark) may share one."""
        self.model = model.eval()
        dtype = next(model.parameters()).dtype
        self.layout = layout_for_model(model.config, model_id, block_tokens, dtype)
        self.cache = HFPrefixCache(namespace, self.layout, model.config)
        self.buffer = buffer or KVBuffer(self.layout, device=next(model.parameters()).device)
        self.ns = namespace
        self.adaptive = adaptive
        self.margin = margin
        self.bandwidth = BandwidthEstimator()
        self.prefill = PrefillModel()

    @torch.no_grad()
    def first_token(self, tokens: list[int], store: bool = True, load: bool = True) -> FirstToken:
        """Prefill ``tokens`` and pick the first token; ``load=False`` forces a recompute."""
        first, past = self._prefill(tokens, load, 0)
        if not store:
            return first
        t_store = time.perf_counter()
        stored = self.cache.store(tokens, past, self.buffer)
        return dataclasses.replace(first, store_s=time.perf_counter() - t_store,
                                   tokens_stored=stored)

    @torch.no_grad()
    def generate(self, tokens: list[int], max_new_tokens: int, *, store: bool = True,
                 load: bool = True, save_decode: bool = True,
                 hint: PrefixHint | None = None) -> Generation:
        """Greedy ``max_new_tokens`` after ``tokens``, then store the whole blocks of the
        prompt, and with ``save_decode`` of prompt + output as far as their KV was computed
        (all but the last token), so the next turn of a chat, whose prompt repeats this
        one and the answer, hits through the answer. ``hint`` is then told to the store
        about the sequence (e.g. ``PrefixHint(session_end=True)`` after a last turn)."""
        first, past = self._prefill(tokens, load, max_new_tokens)
        out_ids = [first.token_id]
        device = self.buffer.device
        while len(out_ids) < max_new_tokens:
            step = self.model(torch.tensor([[out_ids[-1]]], device=device), past_key_values=past,
                              use_cache=True)
            past = step.past_key_values
            out_ids.append(int(torch.argmax(step.logits[0, -1])))
        sequence = list(tokens) + out_ids
        stored, store_s = 0, 0.0
        if store:
            t_store = time.perf_counter()
            # the cache holds the KV of every token but the last one sampled
            stored = self.cache.store(sequence if save_decode else list(tokens), past, self.buffer)
            store_s = time.perf_counter() - t_store
        if hint is not None:
            self.ns.hint(sequence, session_end=hint.session_end, keep_until=hint.keep_until,
                         priority=hint.priority)
        return Generation(first, out_ids, stored, store_s)

    def _prefill(self, tokens: list[int], load: bool, decode_room: int):
        """``(FirstToken, cache)``: the prompt's KV (loaded prefix + computed rest), with
        room for ``decode_room`` more tokens in the engine's buffer."""
        t0 = time.perf_counter()
        cached = 0
        if load:
            cached = min(self.ns.lookup(tokens), ((len(tokens) - 1) // self.layout.block_tokens)
                         * self.layout.block_tokens)
        want = cached
        if self.adaptive and cached:
            want = plan_retrieval(cached, self.layout.block_tokens,
                                  self.ns.spec.block_bytes, self.bandwidth, self.prefill,
                                  self.margin).load_tokens
        n, past = 0, None
        load_s = 0.0
        if want:
            t_load = time.perf_counter()
            n, past = self.cache.restore(tokens, max_tokens=want, buffer=self.buffer,
                                         spare=len(tokens) - want + decode_room)
            load_s = time.perf_counter() - t_load
            if n:
                self.bandwidth.observe(n // self.layout.block_tokens * self.ns.spec.block_bytes, load_s)
        if past is None:  # a miss: the prefill writes the whole prompt's KV into the buffer
            past = self.buffer.cache(0, capacity=len(tokens) + decode_room)
        ids = torch.tensor([tokens[n:]], device=self.buffer.device)
        t_prefill = time.perf_counter()
        out = self.model(ids, past_key_values=past, use_cache=True, logits_to_keep=1)
        logits = out.logits[0, -1].float()
        token = int(torch.argmax(logits))
        ttft = time.perf_counter() - t0
        if n == 0:
            self.prefill.observe(len(tokens), time.perf_counter() - t_prefill)
        first = FirstToken(ttft, token, torch.log_softmax(logits, -1), logits, n, cached, load_s,
                           0.0, 0)
        return first, out.past_key_values
