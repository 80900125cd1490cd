"""TTFT through vLLM (CPU, in this process) with KVStoreConnector on the daemon.

The connector's store URL and codec are engine settings, so there is one
engine per (carrier, codec), started one after the other (a few seconds
each). The first is always (first carrier, ``none``); for each prompt it

1. stores the prompt: a request under a fresh ``cache_salt`` that computes
   the prompt and saves its whole blocks through the connector;
2. measures the miss: a request with the store switched off for it
   (``load=False, store=False``: a plain full prefill), in ``miss_repeat``
   rounds, each followed by this engine's ``hit_repeat`` hits (so recompute
   and hits see the same load of a shared machine).

It runs in a child process of ``benchmarks.ttft`` (``run_child``; the
module's ``main`` is that child): vLLM's CPU worker binds OpenMP threads for
the whole process, so it must start in one that has not run torch yet.

The blocks of the other codecs are the same KV, re-encoded: read back from
the ``none`` namespace and put into the codec's namespace under the same key
salt (the client runs the codec's encoder, as the connector would have).
Then every engine measures the hit: the same prompt under that salt (vLLM
loads the prefix from the daemon and computes the last token), once to warm
up and ``hit_repeat`` times. vLLM returns top-k logprobs only, so the
quality columns are the top-1 agreement of the next token and the largest
top-k logprob difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from benchmarks.ttft_rows import Progress, Prompt, Timed, TTFTRow, build_prompts

MODEL_ID = "kvstore-local-vllm"


@dataclass(frozen=True)
class VLLMRunConfig:
    miss_repeat: int = 2
    hit_repeat: int = 3
    block_tokens: int = 256
    block_size: int = 32
    model_id: str = MODEL_ID  # names the store namespace


def _salt(prompt: Prompt) -> str:
    return f"ttft-{len(prompt.prefix)}"


def _copy_codecs(url: str, layout, prompts: list[Prompt], codecs: list[str]) -> None:
    """Re-encode each prompt's stored ``none`` blocks into the other codecs' namespaces."""
    from kvstore.client import KVClient
    from kvstore.client.vllm_scheduler import request_extra

    with KVClient.connect(url) as client:
        plain = client.namespace(layout, codec="none")
        for prompt in prompts:
            extra = request_extra(SimpleNamespace(cache_salt=_salt(prompt)))
            n, kv = plain.get(prompt.prefix, extra)
            whole = len(prompt.prefix) // layout.block_tokens * layout.block_tokens
            if n != whole:
                raise RuntimeError(f"vLLM stored {n} of the prefix's {whole} whole-block tokens")
            for codec in codecs:
                if codec != "none":
                    client.namespace(layout, codec=codec).put(prompt.prefix, kv, extra)


def vllm_rows(model_dir, urls: dict[str, str], prompts: list[Prompt], codecs: list[str],
              config: VLLMRunConfig = VLLMRunConfig(),
              progress: Progress | None = None) -> list[TTFTRow]:
    """Every (prompt, carrier, codec) row for vLLM, against daemon ``urls``."""
    from kvstore.client.vllm_engine import VLLMEngine, VLLMSettings

    progress = progress or Progress(False)
    longest = max(len(p.tokens) for p in prompts)
    max_len = -(-(longest + 16) // config.block_size) * config.block_size

    def settings(carrier: str, codec: str) -> VLLMSettings:
        return VLLMSettings(url=urls[carrier], codec=codec, model_id=config.model_id,
                            block_tokens=config.block_tokens, block_size=config.block_size,
                            max_model_len=max_len)

    carriers = list(urls)
    misses: dict[int, Timed] = {}
    rows: list[TTFTRow] = []
    plan = [(carriers[0], "none")] + [(c, k) for c in carriers for k in codecs
                                      if (c, k) != (carriers[0], "none")]
    for i, (carrier, codec) in enumerate(plan):
        with VLLMEngine(model_dir, settings(carrier, codec)) as engine:
            progress(f"vllm engine {carrier}/{codec} started")
            measured = codec in codecs
            if i == 0:
                engine.first_token(prompts[0].tokens[:300], load=False, store=False)  # warm-up
            for prompt in prompts:
                salted = partial(engine.first_token, prompt.tokens, salt=_salt(prompt))
                if i == 0:  # store the prompt, then recompute rounds interleaved with hits
                    stored = salted(load=False)
                    progress(f"vllm {len(prompt.tokens)} tokens stored ({stored.ttft_s:.3f}s)")
                salted(store=False)  # warm-up hit
                recomputes, hits = [], []
                for _ in range(max(1, config.miss_repeat) if i == 0 else 1):
                    if i == 0:
                        recomputes.append(engine.first_token(prompt.tokens, load=False,
                                                             store=False))
                    if measured:
                        hits += [salted(store=False) for _ in range(max(1, config.hit_repeat))]
                if i == 0:
                    misses[len(prompt.prefix)] = Timed([r.ttft_s for r in recomputes],
                                                       recomputes[-1])
                if measured:
                    miss = misses[len(prompt.prefix)]
                    hit = Timed([h.ttft_s for h in hits], hits[-1])
                    rows.append(_row(carrier, codec, prompt, miss, hit))
                    progress(f"vllm {len(prompt.tokens)} tokens {carrier}/{codec}: recompute "
                             f"{miss.best:.3f}s, hit {hit.best:.3f}s (x{miss.best / hit.best:.1f})")
            if i == 0:
                _copy_codecs(urls[carrier], engine_layout(), prompts, codecs)
    return rows


def _row(carrier: str, codec: str, prompt: Prompt, miss: Timed, hit: Timed) -> TTFTRow:
    from kvstore.client.vllm_engine import logprob_diff

    h, m = hit.last, miss.last
    return TTFTRow(engine="vllm", prompt_tokens=len(prompt.tokens), carrier=carrier, codec=codec,
                   ttft_miss_s=miss.best, ttft_hit_s=hit.best, speedup=miss.best / hit.best,
                   max_logprob_diff=logprob_diff(h, m), top1_agree=float(h.token_id == m.token_id),
                   tokens_reused=h.tokens_reused, ttft_hit_median_s=hit.median)


def engine_layout():
    """The KVLayout the engine's connector stores under (scheduler and worker agree on it)."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    return get_kv_transfer_group().layout


def run_child(model_dir, urls: dict[str, str], sizes: list[int], suffix_tokens: int,
              codecs: list[str], config: VLLMRunConfig = VLLMRunConfig(),
              progress: Progress | None = None) -> list[TTFTRow]:
    """``vllm_rows`` in a fresh ``python -m benchmarks.ttft_vllm`` (its progress on stderr)."""
    with tempfile.TemporaryDirectory(prefix="kvstore-ttft-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "benchmarks.ttft_vllm", "--model-dir", str(model_dir),
               "--urls", json.dumps(urls), "--tokens", ",".join(map(str, sizes)),
               "--suffix-tokens", str(suffix_tokens), "--codecs", ",".join(codecs),
               "--config", json.dumps(asdict(config)), "--out", str(out)]
        if progress is None or not progress.enabled:
            cmd.append("--no-progress")
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
        return [TTFTRow(**row) for row in json.loads(out.read_text())]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="the vLLM half of benchmarks.ttft (a child)")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--urls", required=True, help="JSON: carrier -> daemon URL")
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--suffix-tokens", type=int, default=1)
    parser.add_argument("--codecs", default="none")
    parser.add_argument("--config", default="{}", help="JSON of VLLMRunConfig")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(t) for t in args.tokens.split(",")]
    prompts = build_prompts(args.model_dir, sizes, args.suffix_tokens, 1)
    rows = vllm_rows(args.model_dir, json.loads(args.urls), prompts, args.codecs.split(","),
                     VLLMRunConfig(**json.loads(args.config)), Progress(not args.no_progress))
    Path(args.out).write_text(json.dumps([r.to_dict() for r in rows]))


if __name__ == "__main__":
    main(sys.argv[1:])
