"""Adaptive retrieval: load a cached prefix only when loading beats recomputing.

Loading ``k`` cached tokens costs about ``overhead + bytes(k) / bandwidth`` (the
carrier's measured bandwidth); recomputing them costs the engine's prefill
time for those tokens. Prefill grows faster than linearly (attention is
quadratic in the prefix), so the model is ``t(n) = a*n + b*n**2``, fitted by
least squares to observed (tokens, seconds) pairs.

With a prompt of ``N`` tokens of which ``k`` are loaded, the request costs
``load(k) + t(N) - t(k)`` instead of ``t(N)``. The planner picks the block
multiple ``k`` that saves the most, and only loads when the estimated load
time is below ``(1 - margin) * t(k)``: the margin (default 0.25) absorbs
estimation error so that a load never makes a request slower than
recomputing it. Until both estimators have data the planner trusts priors
that favour loading (a CPU copy is orders of magnitude faster than prefill).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MARGIN = 0.25


@dataclass
class BandwidthEstimator:
    """Exponentially weighted bytes/second of a carrier's gets, plus per-request overhead."""

    bytes_per_s: float = 1e9
    overhead_s: float = 1e-3
    alpha: float = 0.3
    samples: int = 0

    def observe(self, nbytes: int, seconds: float) -> None:
        if nbytes <= 0 or seconds <= 0:
            return
        rate = nbytes / max(seconds - self.overhead_s, seconds * 0.5)
        self.bytes_per_s = rate if self.samples == 0 else (
            self.alpha * rate + (1 - self.alpha) * self.bytes_per_s
        )
        self.samples += 1

    def seconds(self, nbytes: int) -> float:
        return self.overhead_s + nbytes / self.bytes_per_s


@dataclass
class PrefillModel:
    """``t(n) = a*n + b*n^2`` seconds to prefill ``n`` tokens, fitted to observations."""

    a: float = 1e-4
    b: float = 0.0
    points: list[tuple[int, float]] = field(default_factory=list)
    max_points: int = 64

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        self.points.append((tokens, seconds))
        del self.points[: -self.max_points]
        self._fit()

    def _fit(self) -> None:
        # least squares on t/n = a + b*n (weights every point equally per token)
        xs = [n for n, _ in self.points]
        ys = [t / n for n, t in self.points]
        if len(set(xs)) < 2:
            self.a, self.b = ys[-1], 0.0
            return
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
        b = max(b, 0.0)
        self.b, self.a = b, max(mean_y - b * mean_x, 1e-9)

    def seconds(self, tokens: int) -> float:
        return self.a * tokens + self.b * tokens * tokens


@dataclass(frozen=True)
class RetrievalPlan:
    load_tokens: int
    est_load_s: float
    est_recompute_s: float  # of the loaded tokens, had they been recomputed

    @property
    def est_saving_s(self) -> float:
        return self.est_recompute_s - self.est_load_s


def plan_retrieval(
    cached_tokens: int,
    block_tokens: int,
    block_bytes: int,
    bandwidth: BandwidthEstimator,
    prefill: PrefillModel,
    margin: float = DEFAULT_MARGIN,
) -> RetrievalPlan:
    """How many of the ``cached_tokens`` leading tokens to load (a block multiple, maybe 0)."""
    best = RetrievalPlan(0, 0.0, 0.0)
    for blocks in range(1, cached_tokens // block_tokens + 1):
        k = blocks * block_tokens
        load = bandwidth.seconds(blocks * block_bytes)
        recompute = prefill.seconds(k)
        if load <= (1 - margin) * recompute and recompute - load > best.est_saving_s:
            best = RetrievalPlan(k, load, recompute)
    return best
