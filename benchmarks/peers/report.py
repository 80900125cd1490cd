"""What the runner collects per system, the medians and ratios, and the JSON/markdown/plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import write_json
from benchmarks.peers.catalog import SystemSpec
from benchmarks.peers.workload import Workload

# issue 16: kvstore over shm against LMCache in the same run (ratios; >1: kvstore better)
LMCACHE_TARGETS = {"put": 2.0, "get": 2.0, "lookup_speedup": 1.0}


@dataclass
class SystemRun:
    """One system's messages from its worker: status, facts, and its rounds."""

    spec: SystemSpec
    python: str
    status: str = "starting"  # ok | not installed | failed
    reason: str = ""
    info: dict = field(default_factory=dict)
    get_destination: str = ""
    lookup_call: str | None = None
    rounds: list[dict] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def started(self, msg: dict) -> None:
        if "ready" in msg:
            self.status, self.info = "ok", msg["info"]
            self.get_destination, self.lookup_call = msg["get_destination"], msg["lookup_call"]
            self._check(msg["warm"], "warm-up round")
        elif "not_installed" in msg:
            self.status, self.reason = "not installed", msg["not_installed"]
        else:
            self.status, self.reason = "failed", msg.get("error", repr(msg))

    def add_round(self, msg: dict, load: float) -> None:
        if "result" not in msg:
            self.status, self.reason = "failed", msg.get("error", repr(msg))
            return
        self.rounds.append(msg["result"])
        self.loads.append(load)
        self._check(msg["result"], f"round {len(self.rounds)}")

    def _check(self, result: dict, what: str) -> None:
        if not result["bytes_ok"]:
            self.status, self.reason = "failed", f"{what}: GET bytes differ from what was PUT"
        elif not result["lookup_ok"]:
            self.status, self.reason = "failed", f"{what}: a lookup missed stored blocks"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _sig(x: float) -> float:
    """Four significant digits: GB/s of tiny smoke-test workloads must not round to 0."""
    return float(f"{x:.4g}")


def _gbps(nbytes: int, seconds):
    return _sig(nbytes / seconds / 1e9) if seconds else None


def _ratio(a, b):
    return _sig(a / b) if a is not None and b else None


def summarize(w: Workload, runs: list[SystemRun], load_before, load_after) -> dict:
    rows = []
    for run in runs:
        row = {"system": run.spec.name, "label": run.spec.label, "status": run.status,
               "reason": run.reason, "python": run.python, "info": run.info,
               "get_destination": run.get_destination, "lookup_call": run.lookup_call,
               "rounds_checked": len(run.rounds) if run.status == "ok" else 0}
        if run.status == "ok":
            med = {k: _median([r[k] for r in run.rounds])
                   for k in ("put_s", "get_s", "get_alloc_s", "lookup_s")}
            row.update(put_gbps=_gbps(w.nbytes, med["put_s"]), get_gbps=_gbps(w.nbytes, med["get_s"]),
                       get_alloc_gbps=_gbps(w.nbytes, med["get_alloc_s"]),
                       lookup_ms=_sig(med["lookup_s"] * 1e3) if med["lookup_s"] else None,
                       # the least disturbed round (a shared machine's load swings)
                       put_gbps_best=_gbps(w.nbytes, min(r["put_s"] for r in run.rounds)),
                       get_gbps_best=_gbps(w.nbytes, min(r["get_s"] for r in run.rounds)),
                       rounds=run.rounds, load_1min=run.loads)
        rows.append(row)
    by = {r["system"]: r for r in rows if r["status"] == "ok"}
    base = by.get("memcpy")
    for r in rows:
        if base and r["status"] == "ok":
            r["put_vs_memcpy"] = _ratio(r["put_gbps"], base["put_gbps"])
            r["get_vs_memcpy"] = _ratio(r["get_gbps"], base["get_gbps"])
    versus = None
    if "kvstore-shm" in by and "lmcache" in by:
        k, lm = by["kvstore-shm"], by["lmcache"]
        versus = {"put": _ratio(k["put_gbps"], lm["put_gbps"]),
                  "get": _ratio(k["get_gbps"], lm["get_gbps"]),
                  "lookup_speedup": _ratio(lm["lookup_ms"], k["lookup_ms"])}
        versus["meets"] = {op: versus[op] is not None and versus[op] >= target
                           for op, target in LMCACHE_TARGETS.items()}
    return {"workload": w.to_dict(), "rows": rows, "kvstore_shm_vs_lmcache": versus,
            "load_before": list(load_before), "load_after": list(load_after)}


def last_line(text: str, width: int = 100) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:width].replace("|", "/") if lines else ""


def _fmt(v, unit=""):
    return "–" if v is None else f"{v:.3g}{unit}"


def markdown(w: Workload, summary: dict) -> str:
    rounds = f"{w.rounds} round{'s' if w.rounds != 1 else ''}"
    lines = [f"{w.blocks} blocks × {w.block_bytes / 2**20:g} MiB, median of {rounds} "
             f"(round-robin, first rotating), every GET checked byte for byte; load average "
             f"{summary['load_before'][0]:.2f} before, {summary['load_after'][0]:.2f} after.", "",
             "| system | PUT GB/s | GET GB/s | PUT / GET × memcpy | best round PUT / GET "
             "| GET new object GB/s | lookup p50 | GET destination |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['status']} | | | | | | {last_line(r['reason'])} |")
            continue
        ratios = f"{_fmt(r.get('put_vs_memcpy'))} / {_fmt(r.get('get_vs_memcpy'))}"
        best = f"{_fmt(r['put_gbps_best'])} / {_fmt(r['get_gbps_best'])}"
        lines.append(f"| {r['label']} | {_fmt(r['put_gbps'])} | {_fmt(r['get_gbps'])} | {ratios} "
                     f"| {best} | {_fmt(r['get_alloc_gbps'])} | {_fmt(r['lookup_ms'], ' ms')} "
                     f"| {r['get_destination']} |")
    v = summary["kvstore_shm_vs_lmcache"]
    if v:
        met = ", ".join(f"{op} {'met' if ok else 'not met'}" for op, ok in v["meets"].items())
        lines += ["", f"kvstore shm vs LMCache: PUT {v['put']}×, GET {v['get']}×, lookup "
                      f"{v['lookup_speedup']}× faster (>1: kvstore better); targets "
                      f"(PUT, GET ≥ 2×, lookup faster): {met}."]
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    rows = [r for r in summary["rows"] if r["status"] == "ok"]
    names = [r["system"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(rows))
    ax1.bar([x - 0.2 for x in xs], [r["put_gbps"] for r in rows], 0.4, label="PUT")
    ax1.bar([x + 0.2 for x in xs], [r["get_gbps"] for r in rows], 0.4, label="GET")
    ax1.set_xticks(list(xs), names, rotation=30, ha="right")
    ax1.set_ylabel("GB/s (median)")
    ax1.legend()
    looked = [r for r in rows if r["lookup_ms"]]
    ax2.bar([r["system"] for r in looked], [r["lookup_ms"] for r in looked])
    ax2.set_yscale("log")
    ax2.set_ylabel("lookup p50, ms (log)")
    ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


def write_reports(out: Path, w: Workload, summary: dict) -> str:
    """peers.json, peers.md, peers.png under ``out``; returns the markdown and the plot line."""
    write_json(out / "peers.json", "peers", summary["rows"],
               **{k: v for k, v in summary.items() if k != "rows"})
    text = markdown(w, summary)
    (out / "peers.md").write_text(text)
    return text + plot(out / "peers.png", summary)
