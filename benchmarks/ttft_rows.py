"""The rows of ``benchmarks.ttft`` and the pieces both engines' runs share.

One ``TTFTRow`` per (engine, prompt length, carrier, codec): the prompt's
TTFT recomputed (miss, the baseline) and loaded from the daemon (hit), both
measured in the same run, and how far the hit's next-token distribution is
from the recompute's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Prompt:
    """A long shared prefix (whole store blocks) and the request's own suffix."""

    prefix: list[int]
    suffix: list[int]
    extra: list[int]  # more text after the prefix: the codec quality positions

    @property
    def tokens(self) -> list[int]:
        return self.prefix + self.suffix


def make_prompt(corpus: list[int], prefix_tokens: int, suffix_tokens: int,
                quality_positions: int) -> Prompt:
    after = corpus[prefix_tokens:]
    if len(after) < max(suffix_tokens, quality_positions):
        raise ValueError("corpus too short for the prefix plus its suffix")
    return Prompt(corpus[:prefix_tokens], after[:suffix_tokens], after[:quality_positions])


def build_prompts(model_dir, sizes: list[int], suffix_tokens: int,
                  quality_positions: int) -> list[Prompt]:
    """One prompt per prefix length, all cut from the same corpus text (deterministic)."""
    from transformers import AutoTokenizer

    from kvstore.demo.local_setup import corpus_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    corpus = corpus_tokens(tokenizer, max(sizes) + max(suffix_tokens, quality_positions))
    return [make_prompt(corpus, n, suffix_tokens, quality_positions) for n in sorted(sizes)]


@dataclass
class TTFTRow:
    """One line of the table (JSON row: ``asdict``)."""

    engine: str  # hf | vllm
    prompt_tokens: int  # prefix + suffix
    carrier: str  # shm | tcp
    codec: str
    ttft_miss_s: float  # full prefill of the prompt (best of the repeats): the baseline
    ttft_hit_s: float  # prefix loaded from the daemon, suffix computed (best of the repeats)
    speedup: float  # ttft_miss_s / ttft_hit_s
    max_logprob_diff: float  # next token: hf over the whole vocabulary, vllm over its top-k
    top1_agree: float  # fraction of compared next tokens whose argmax equals the recompute's
    tokens_reused: int  # prompt tokens the hit loaded instead of computing
    ttft_hit_median_s: float
    load_s: float | None = None  # hf: lookup excluded, get + decode into the cache
    max_logit_err: float | None = None  # hf: max |logit_hit - logit_miss| over the positions
    rel_logit_err: float | None = None  # hf: max_logit_err / max |logit_miss|
    quality_positions: int = 1  # next tokens compared for top1_agree / logit errors
    block_tokens: int = 256  # the connector's store block (tokens)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Timed:
    """Wall times of repeated runs of one request; ``last`` is the last run's result."""

    seconds: list[float]
    last: object

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def ttft_of(result) -> float:
    """The TTFT of an engine's first-token result (``FirstToken``, ``VLLMFirstToken``)."""
    return result.ttft_s


def repeat(run: Callable[[], object], times: int, seconds_of: Callable[[object], float]) -> Timed:
    """Run ``times`` (>= 1) and collect each run's TTFT (``seconds_of(result)``)."""
    results = [run() for _ in range(max(1, times))]
    return Timed([seconds_of(r) for r in results], results[-1])


class Progress:
    """One line per finished step on stderr, with the time since the run began."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            import sys

            print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr,
                  flush=True)
