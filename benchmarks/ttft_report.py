"""The TTFT benchmark's plot (``--plot``) and markdown tables (``--markdown``).

Plot: one column per engine; top, TTFT against prompt length (log scale) for
the recompute and every (carrier, codec) hit; bottom, the speedup with the
targets (50x over shm, 20x over tcp at 4k tokens) as dotted lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.ttft_rows import TTFTRow

TARGETS = {"shm": 50.0, "tcp": 20.0}
COLORS = {"none": "tab:blue", "fp8_e4m3": "tab:orange", "int8": "tab:green", "int4": "tab:red"}
ENGINES = {"hf": "transformers", "vllm": "vLLM"}


def _series(rows: Sequence[TTFTRow], engine: str):
    mine = [r for r in rows if r.engine == engine]
    keys = list(dict.fromkeys((r.carrier, r.codec) for r in mine))
    return mine, keys


def plot(rows: Sequence[TTFTRow], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(r.engine for r in rows))
    fig, axes = plt.subplots(2, len(engines), figsize=(5.5 * len(engines), 7.5), dpi=120,
                             squeeze=False, sharex=True)
    for col, engine in enumerate(engines):
        mine, keys = _series(rows, engine)
        top, bottom = axes[0][col], axes[1][col]
        sizes = sorted({r.prompt_tokens for r in mine})
        miss = {r.prompt_tokens: r.ttft_miss_s for r in mine}
        top.plot(sizes, [miss[n] for n in sizes], color="black", marker="o", label="recompute")
        for carrier, codec in keys:
            pts = sorted((r.prompt_tokens, r.ttft_hit_s, r.speedup) for r in mine
                         if (r.carrier, r.codec) == (carrier, codec))
            style = {"color": COLORS.get(codec), "marker": "s" if carrier == "shm" else "^",
                     "linestyle": "-" if carrier == "shm" else "--", "markersize": 4}
            label = f"hit {carrier} {codec}"
            top.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
            bottom.plot([p[0] for p in pts], [p[2] for p in pts], label=label, **style)
        for carrier, target in TARGETS.items():
            bottom.axhline(target, color="grey", linewidth=0.8,
                           linestyle=":" if carrier == "shm" else "-.")
            bottom.annotate(f"target {carrier} {target:g}x at 4k", (sizes[0], target), fontsize=7,
                            color="grey", textcoords="offset points", xytext=(0, 2))
        top.set_yscale("log")
        top.set_ylabel("TTFT (s)")
        top.set_title(f"{ENGINES.get(engine, engine)}: TTFT")
        bottom.set_yscale("log")
        bottom.set_ylabel("speedup (recompute / hit)")
        bottom.set_xlabel("prompt tokens")
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(sizes, [str(n) for n in sizes])
        bottom.minorticks_off()
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value, digits: int = 3) -> str:
    """``digits`` significant digits (small errors stay readable), "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(rows: Sequence[TTFTRow]) -> str:
    """Two tables: TTFT per engine/prompt/carrier/codec, and the codec quality (hf)."""
    out = ["| engine | prompt tokens | carrier | codec | TTFT recompute (s) | TTFT hit (s) "
           "| speedup | top-1 agree | max logprob diff |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {ENGINES.get(r.engine, r.engine)} | {r.prompt_tokens} | {r.carrier} "
                   f"| {r.codec} | {r.ttft_miss_s:.2f} | {r.ttft_hit_s:.3f} "
                   f"| {r.speedup:.1f}x | {r.top1_agree:.3f} | {_fmt(r.max_logprob_diff, 2)} |")
    quality = {}
    for r in rows:
        if r.engine == "hf" and r.max_logit_err is not None:
            quality.setdefault((r.prompt_tokens, r.codec), r)
    if quality:
        out += ["", "| prompt tokens | codec | max abs logit error | relative | "
                "top-1 agreement | positions |", "|---:|---|---:|---:|---:|---:|"]
        for (n, codec), r in quality.items():
            out.append(f"| {n} | {codec} | {_fmt(r.max_logit_err, 3)} "
                       f"| {_fmt(r.rel_logit_err, 3)} | {r.top1_agree:.3f} "
                       f"| {r.quality_positions} |")
    return "\n".join(out) + "\n"
