"""The TTFT benchmark's plot (``--plot``), markdown tables (``--markdown``) and run merging.

Plot: one column per engine; top, TTFT against prompt length (log scale) for
the recompute and every (carrier, codec) hit; bottom, the speedup with the
targets (50x over shm, 20x over tcp at 4k tokens) as dotted lines.

On a shared machine another tenant's burst can slow every repeat of a row
(they run seconds apart), so several runs minutes apart say more than one::

    python -m benchmarks.ttft_report RUN1.json RUN2.json ... --json OUT --plot PNG --markdown MD

merges runs row by row: the recompute and the hit are each the fastest of
all runs (the least disturbed measurement of each), the speedup their ratio;
quality columns come from the first run (they do not depend on timing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
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
    out = ["| engine | store block | prompt tokens | tokens reused | carrier | codec "
           "| TTFT recompute (s) | TTFT hit (s) | speedup | top-1 agree | max logprob diff |",
           "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {ENGINES.get(r.engine, r.engine)} | {r.block_tokens} | {r.prompt_tokens} "
                   f"| {r.tokens_reused} | {r.carrier} "
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


def merge(runs: Sequence[Sequence[TTFTRow]]) -> list[TTFTRow]:
    """Row by row over ``runs``: fastest recompute, fastest hit, their ratio."""
    key = lambda r: (r.engine, r.block_tokens, r.prompt_tokens, r.carrier, r.codec)  # noqa: E731
    merged: dict[tuple, TTFTRow] = {}
    for rows in runs:
        for r in rows:
            best = merged.get(key(r))
            if best is None:
                merged[key(r)] = r
                continue
            miss = min(best.ttft_miss_s, r.ttft_miss_s)
            hit = min(best.ttft_hit_s, r.ttft_hit_s)
            median = min(best.ttft_hit_median_s, r.ttft_hit_median_s)
            merged[key(r)] = dataclasses.replace(best, ttft_miss_s=miss, ttft_hit_s=hit,
                                                 speedup=miss / hit, ttft_hit_median_s=median)
    return list(merged.values())


def main(argv=None) -> list[TTFTRow]:
    from benchmarks.common import print_table, write_json

    parser = argparse.ArgumentParser(description="merge benchmarks.ttft runs (JSON)")
    parser.add_argument("runs", nargs="+", help="JSON files written by benchmarks.ttft --json")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="PATH")
    parser.add_argument("--markdown", metavar="PATH")
    args = parser.parse_args(argv)
    docs = [json.loads(open(path).read()) for path in args.runs]
    rows = merge([[TTFTRow(**row) for row in doc["rows"]] for doc in docs])
    title = f"ttft: local model, best of {len(docs)} runs, {docs[0]['machine']['cpus']} CPUs"
    print_table([r.to_dict() for r in rows], title=title)
    if args.json:
        runs = [{k: doc.get(k) for k in ("load_avg_before", "load_avg_after")} for doc in docs]
        extra = {k: docs[0][k] for k in ("suffix_tokens", "quality_positions", "miss_repeat",
                                          "hit_repeat") if k in docs[0]}
        write_json(args.json, "ttft", [r.to_dict() for r in rows], merged_runs=runs, **extra)
    if args.plot:
        plot(rows, args.plot, title)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
