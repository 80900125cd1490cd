"""TTFT through transformers (``HFEngine``): recompute vs a prefix loaded from the daemon.

Per prompt length N (prefix of N tokens, a whole number of store blocks,
plus the request's suffix):

1. miss: ``first_token(prompt, load=False, store=False)``, a full prefill of
   the whole prompt;
2. the first miss left the prompt's KV in the engine's buffer; its whole
   blocks are put into the daemon once per codec (``Namespace.put``: the
   codec's encoder runs in the client, as it would after any miss);
3. hit, per carrier and codec: ``first_token(prompt, store=False)`` through a
   client of that carrier: lookup, get, decode into the buffer, forward of
   the suffix; once to warm up (first round), then ``hit_repeat`` times.

4. codec quality: the prefix restored from the daemon, then ``quality``
   further tokens of the text run on it; their logits are compared with one
   full forward of prefix + those tokens (max |error|, relative error, top-1
   agreement over the positions).

Steps 1 and 3 run in ``miss_repeat`` interleaved rounds, so that recompute
and hits see the same load of a shared machine; the best of each is the
row's TTFT (the median of the hits is kept too).

All engines of a run share one ``KVBuffer`` (one request at a time), so miss
and hit use the same KV memory, and the model uses ``sdpa_gqa`` attention
(``kvstore.client.hf_attention``) for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.ttft_rows import Progress, Prompt, Timed, TTFTRow

MODEL_ID = "kvstore-local-hf"


@dataclass(frozen=True)
class HFRunConfig:
    miss_repeat: int = 2
    hit_repeat: int = 3
    block_tokens: int = 256
    model_id: str = MODEL_ID  # names the store namespace


@dataclass(frozen=True)
class Quality:
    max_logit_err: float
    rel_logit_err: float
    top1_agree: float
    positions: int


def load_model(model_dir):
    from transformers import LlamaForCausalLM

    from kvstore.client.hf_attention import use_grouped_sdpa

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    use_grouped_sdpa(model)
    return model


@torch.no_grad()
def quality(model, engine, prompt: Prompt, reference: torch.Tensor) -> Quality:
    """Logits of ``prompt.extra`` run on the prefix restored through ``engine`` vs ``reference``."""
    tokens = prompt.prefix + prompt.extra
    n, cache = engine.cache.restore(tokens, max_tokens=len(prompt.prefix), buffer=engine.buffer,
                                    spare=len(prompt.extra))
    if n != len(prompt.prefix):
        raise RuntimeError(f"restored {n} of {len(prompt.prefix)} prefix tokens")
    q = len(prompt.extra)
    got = model(torch.tensor([prompt.extra]), past_key_values=cache,
                logits_to_keep=q).logits[0].float()
    err = (got - reference).abs().max().item()
    return Quality(err, err / reference.abs().max().item(),
                   (got.argmax(-1) == reference.argmax(-1)).float().mean().item(), q)


@torch.no_grad()
def reference_logits(model, engine, prompt: Prompt) -> torch.Tensor:
    """Logits at the ``prompt.extra`` positions of one full forward of prefix + extra."""
    tokens = prompt.prefix + prompt.extra
    cache = engine.buffer.cache(0, capacity=len(tokens))
    return model(torch.tensor([tokens]), past_key_values=cache,
                 logits_to_keep=len(prompt.extra)).logits[0].float()


def store_prefix(client, layout, codecs: list[str], prompt: Prompt, buffer) -> None:
    """Put the prefix's KV, which the last recompute left in ``buffer``, under every codec."""
    kv = buffer.canonical(len(prompt.prefix))
    for codec in codecs:
        stored = client.namespace(layout, codec=codec).put(prompt.prefix, kv)
        if stored != len(prompt.prefix):
            raise RuntimeError(f"the daemon stored {stored} of {len(prompt.prefix)} tokens")


def hf_rows(model, urls: dict[str, str], prompts: list[Prompt], codecs: list[str],
            config: HFRunConfig = HFRunConfig(), progress: Progress | None = None) -> list[TTFTRow]:
    """Every (prompt, carrier, codec) row for transformers, against daemon ``urls``."""
    from kvstore.client import KVClient
    from kvstore.client.hf_adapter import layout_for_model
    from kvstore.client.hf_engine import HFEngine
    from kvstore.client.hf_reserved import KVBuffer

    progress = progress or Progress(False)
    layout = layout_for_model(model.config, config.model_id, config.block_tokens, torch.float32)
    buffer = KVBuffer(layout)
    clients = {c: KVClient.connect(url) for c, url in urls.items()}
    rows: list[TTFTRow] = []
    try:
        engines = {(c, codec): HFEngine(model, clients[c].namespace(layout, codec=codec),
                                        config.model_id,
                                        config.block_tokens, adaptive=False, buffer=buffer)
                   for c in urls for codec in codecs}
        first = next(iter(engines.values()))
        first.first_token(prompts[0].tokens[:300], load=False, store=False)  # first-call costs
        for prompt in prompts:
            n_prompt = len(prompt.tokens)
            misses, hits = [], {key: [] for key in engines}
            for round_ in range(max(1, config.miss_repeat)):  # interleaved: same machine load
                misses.append(first.first_token(prompt.tokens, load=False, store=False))
                if round_ == 0:
                    progress(f"hf {n_prompt} tokens: recompute {misses[0].ttft_s:.3f}s")
                    store_prefix(clients[next(iter(urls))], layout, codecs, prompt, buffer)
                for key, engine in engines.items():
                    if round_ == 0:
                        engine.first_token(prompt.tokens, store=False)  # warm-up (maps, buffers)
                    hits[key] += [engine.first_token(prompt.tokens, store=False)
                                  for _ in range(max(1, config.hit_repeat))]
            miss = Timed([m.ttft_s for m in misses], misses[-1])
            ref = reference_logits(model, first, prompt)
            for (carrier, codec), engine in engines.items():
                hit = Timed([h.ttft_s for h in hits[carrier, codec]], hits[carrier, codec][-1])
                h, m = hit.last, miss.last
                q = quality(model, engine, prompt, ref)
                rows.append(TTFTRow(
                    engine="hf", prompt_tokens=n_prompt, carrier=carrier, codec=codec,
                    ttft_miss_s=miss.best, ttft_hit_s=hit.best, speedup=miss.best / hit.best,
                    max_logprob_diff=float((h.logprobs - m.logprobs).abs().max()),
                    top1_agree=q.top1_agree, tokens_reused=h.tokens_reused,
                    ttft_hit_median_s=hit.median, load_s=h.load_s,
                    max_logit_err=q.max_logit_err, rel_logit_err=q.rel_logit_err,
                    quality_positions=q.positions))
                progress(f"hf {n_prompt} tokens {carrier}/{codec}: hit {hit.best:.3f}s "
                         f"(x{miss.best / hit.best:.1f}), top-1 {q.top1_agree:.3f}")
    finally:
        for client in clients.values():
            client.close()
    return rows
