"""Prefix hit rate of every eviction policy on a request trace, against Belady's OPT.

    python -m benchmarks.hit_rate --trace ../shared/data/mooncake_conversation_trace.jsonl \\
        [--fractions 0.02,0.05,0.1,0.2,0.4] [--policies lru,arc,...] [--limit N] \\
        [--part first|second] [--hints none,session-end,session-end:30] [--save-decode] \\
        [--json PATH] [--plot PATH]

Capacity is a fraction of the trace's unique blocks. Hit rate = blocks served
from the cache as part of a request's leading cached prefix / all blocks
requested (see ``benchmarks.replay`` for the replay itself). The row ``opt``
is the offline ceiling; ``inf`` in the JSON is the hit rate of an unbounded
cache (only first touches miss).

``--hints``: one or more modes, comma-separated: ``none``, or
``session-end[:DELAY]``: each conversation's blocks get
``Hint(session_end=True)`` DELAY seconds (default 0) after its last turn
arrived, by the trace's timestamps (``benchmarks.conversations`` links the
turns). Every online policy runs once per mode (rows ``lru+end@30s``); OPT
runs once, without hints (it needs none). ``--save-decode``: the full blocks
of prompt + answer are stored after each request (OPT and the unbounded
cache see the same stored set). ``--part first`` replays the first half of
the trace (for tuning); ``--part second`` replays it all and counts the
second half only (held back); capacities stay fractions of the whole trace's
unique blocks.
"""

from __future__ import annotations

import sys
import time

from benchmarks.common import base_parser, print_table, write_json
from benchmarks.replay import (
    Trace,
    infinite_cache_hit_rate,
    load_trace,
    next_use_schedule,
    replay,
)
from kvstore.eviction import available_policies, get_policy
from kvstore.eviction.registry import OFFLINE

DEFAULT_FRACTIONS = "0.02,0.05,0.1,0.2,0.4"


def default_policies() -> list[str]:
    """Every available policy, offline ones (OPT) last."""
    names = available_policies()
    return [n for n in names if n not in OFFLINE] + [n for n in names if n in OFFLINE]


def parse_hints(text: str) -> list[float | None]:
    """``none,session-end,session-end:30`` -> ``[None, 0.0, 30.0]`` (seconds late; None: no hints)."""
    modes: list[float | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "none":
            modes.append(None)
        elif part == "session-end" or part.startswith("session-end:"):
            delay = float(part.partition(":")[2] or 0.0)
            if delay < 0:
                raise ValueError("a hint cannot arrive before the turn ends")
            modes.append(delay)
        else:
            raise ValueError(f"unknown hint mode {part!r}: none or session-end[:DELAY]")
    return modes or [None]


def label(name: str, delay: float | None) -> str:
    return name if delay is None else f"{name}+end@{delay:g}s"


def run(
    trace: Trace,
    policies: list[str],
    fractions: list[float],
    progress: bool = True,
    hints: list[float | None] | None = None,
) -> list[dict]:
    """One row per (policy, hint mode, fraction), in that order; offline policies ignore hints."""
    schedule = next_use_schedule(trace) if "opt" in policies else None
    hints = hints or [None]
    runs = [(n, d) for n in policies for d in ([None] if n in OFFLINE else hints)]
    bar = _progress_bar(len(runs) * len(fractions) * trace.requests, progress)
    rows = []
    for name, delay in runs:
        for fraction in fractions:
            capacity = trace.capacity(fraction)
            kwargs = {"schedule": schedule} if name == "opt" else {}
            policy = get_policy(name, capacity=capacity, **kwargs)
            t0 = time.perf_counter()
            result = replay(trace, policy, capacity, progress=bar.update if bar else None, hint_delay=delay)
            rows.append(
                {
                    "policy": label(name, delay),
                    "fraction": fraction,
                    "capacity_blocks": capacity,
                    "hit_rate": round(result.hit_rate, 4),
                    "evictions": result.evictions,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    if bar:
        bar.close()
    return rows


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="req", unit_scale=True, desc="replay", disable=None)


def pivot(rows: list[dict]) -> list[dict]:
    """Policies as rows, capacities as columns (the table of the README)."""
    table: dict[str, dict] = {}
    for r in rows:
        table.setdefault(r["policy"], {"policy": r["policy"]})[f"{r['fraction']:.0%}"] = r["hit_rate"]
    return list(table.values())


def plot(rows: list[dict], path: str, title: str, ceiling: float | None = None) -> None:
    """Hit rate against capacity (fraction of unique blocks), one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = iter("osD^v<>px*h")
    for name in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == name]
        if name in OFFLINE:
            style = {"linestyle": "--", "color": "black"}
        else:
            style = {"marker": next(markers, "o"), "markersize": 4}
        ax.plot([100 * r["fraction"] for r in mine], [r["hit_rate"] for r in mine], label=name, **style)
    if ceiling is not None:
        ax.axhline(ceiling, color="grey", linewidth=0.8, linestyle=":", label="unbounded cache")
    ax.set_xscale("log")
    ticks = sorted({100 * r["fraction"] for r in rows})
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("cache capacity (% of unique blocks)")
    ax.set_ylabel("prefix hit rate (blocks)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--trace", required=True, help="Mooncake-format JSONL trace")
    parser.add_argument("--fractions", default=DEFAULT_FRACTIONS, help="capacities, comma-separated")
    parser.add_argument("--policies", help="comma-separated (default: all, opt last)")
    parser.add_argument("--limit", type=int, help="replay only the first N requests")
    parser.add_argument("--part", choices=("first", "second"),
                        help="first half (tuning) or second half (held back, warmed by the first)")
    parser.add_argument("--hints", default="none",
                        help="none, session-end[:DELAY] (seconds late); several, comma-separated")
    parser.add_argument("--save-decode", action="store_true",
                        help="store the full blocks of prompt + answer after each request")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of hit rate vs capacity")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    fractions = [float(f) for f in args.fractions.split(",") if f]
    policies = args.policies.split(",") if args.policies else default_policies()
    for name in policies:
        if name not in available_policies():
            parser.error(f"unknown policy {name!r}; available: {', '.join(available_policies())}")
    try:
        hints = parse_hints(args.hints)
    except ValueError as exc:
        parser.error(str(exc))
    trace = load_trace(args.trace, limit=args.limit, part=args.part, save_decode=args.save_decode)
    ceiling = infinite_cache_hit_rate(trace)
    rows = run(trace, policies, fractions, progress=not args.no_progress, hints=hints)

    title = (
        f"{trace.name}: {trace.measured} requests, {trace.blocks_requested} blocks, "
        f"{trace.unique_blocks} unique; unbounded cache {ceiling:.4f}"
        + ("; answers stored" if args.save_decode else "")
    )
    print_table(pivot(rows), title=title)
    if args.json:
        write_json(
            args.json,
            "hit_rate",
            [{k: r[k] for k in ("policy", "fraction", "capacity_blocks", "hit_rate")} for r in rows],
            trace=trace.name,
            requests=trace.measured,
            part=args.part,
            hints=args.hints,
            save_decode=args.save_decode,
            blocks_requested=trace.blocks_requested,
            unique_blocks=trace.unique_blocks,
            inf=round(ceiling, 4),
            runs=[{k: r[k] for k in ("policy", "fraction", "evictions", "seconds")} for r in rows],
        )
    if args.plot:
        plot(rows, args.plot, f"{trace.name} ({trace.measured} requests)", ceiling)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
