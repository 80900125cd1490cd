"""Cluster benchmark: 1, 2, 3 daemons as one store, on a real trace, and losing a node.

    python -m benchmarks.cluster [--nodes 1,2,3] [--requests 3000] [--node-share 0.05]
                                 [--threads 4] [--seconds 5] [--json PATH]

Each configuration starts a real etcd and N ``kvstore serve`` daemons on
loopback (CPU arena of ``--node-share`` of the trace's unique blocks each,
no SSD: the point is that N nodes hold N times the blocks), and replays a Mooncake trace (``../shared/data``,
each hash id one block of ``--block-tokens`` tokens) through
``KVClient.connect("etcd://...")``: per request, lookup, get the cached
prefix, put the whole prompt. Rows:

- ``hit_rate``: blocks served from the cluster / blocks requested (the trace's
  ceiling with an infinite cache is printed too);
- ``get_per_s`` / ``get_gbps``: aggregate GET throughput of ``--threads``
  client threads reading cached prompts for ``--seconds``, and the same
  load against one daemon reached directly over tcp (the baseline, same run):
  ``ratio`` = cluster / direct;
- ``balance``: the busiest node's share of the client's requests, times N
  (1.0 = even);
- a ``node loss`` row for the largest N: the same replay, with one node
  SIGKILLed halfway; hit rate of the second half with and without the kill,
  the errors the client saw (must be 0) and the slowest lookup meanwhile.

On this 2-core machine the daemons, etcd and the client share two cores, so
throughput cannot grow with N; see docs/cluster.md for the scaling model.

    python -m benchmarks.cluster --netns [--rate 30mbit] [--prompts 300] [--json PATH]

``--netns``: separate hosts instead (root; tests/cluster/netns.py): etcd,
each daemon and the client on their own network namespace joined by a
bridge, each daemon host's link limited to ``--rate`` both ways (tbf), so
the cluster is network-bound as a real one is. Rows: aggregate GET
throughput and hit rate of ``--threads`` client threads over ``--prompts``
cached prompts for 1, 2, 3 nodes, and for the largest N the cost of a cut
node (its link down, no reset): lookup latency p50/p99/max and hit rate
before, during and after the cut, and the healthy nodes' p99 during it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import base_parser, print_table, write_json
from kvstore.client import KVClient
from kvstore.cluster.etcd import wait_until
from kvstore.demo.daemon_process import DaemonProc, free_port
from kvstore.demo.etcd_process import EtcdProc
from kvstore.layout import KVLayout

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRACE = DATA / "mooncake_conversation_trace.jsonl"


def load_prompts(path: Path, limit: int) -> list[np.ndarray]:
    import json

    out = []
    with open(path) as f:
        for line in f:
            if len(out) >= limit:
                break
            if line.strip():
                out.append(np.asarray(json.loads(line)["hash_ids"], dtype=np.uint32))
    return out


def to_tokens(hash_ids: np.ndarray, block_tokens: int) -> np.ndarray:
    """Block i of the prompt is ``block_tokens`` tokens derived from hash id i."""
    base = hash_ids.astype(np.uint64)[:, None] * block_tokens + np.arange(block_tokens)
    return (base % (1 << 31)).astype(np.uint32).reshape(-1)


def payload(hash_id: int, nbytes: int) -> bytes:
    return bytes([hash_id % 251]) * nbytes


class Setup:
    """etcd + N daemons of one cluster, started fresh."""

    def __init__(self, n: int, node_mb: int, replicas: int, hot_threshold: int, ttl: int):
        self.etcd = EtcdProc()
        self.tmp = tempfile.mkdtemp(prefix="kvstore-bench-cluster-")
        self.nodes = []
        for i in range(n):
            self.nodes.append(DaemonProc(
                ["--listen", f"tcp://127.0.0.1:{free_port()}", "--cpu-bytes", f"{node_mb}MiB",
                 "--ssd-bytes", "0", "--ssd-dir", f"{self.tmp}/n{i}", "--etcd",
                 self.etcd.endpoint, "--cluster", "bench", "--cluster-ttl", str(ttl),
                 "--replicas", str(replicas), "--hot-threshold", str(hot_threshold),
                 "--node-id", f"n{i}", "--log-level", "warning"],
                env={"KVSTORE_PREFAULT": "0"},
            ))
        self.url = self.etcd.url("bench")

    def close(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.kill()
        self.etcd.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def replay(ns, prompts, block_tokens: int, block_bytes: int, kill=None, kill_at: int = -1,
           progress=None) -> dict:
    """Per request: lookup, get the cached prefix, put the prompt. Hits per half, errors."""
    hits = [0, 0]
    requested = [0, 0]
    errors = 0
    slowest = 0.0
    half = len(prompts) // 2
    for i, ids in enumerate(prompts):
        if i == kill_at and kill is not None:
            kill()
        toks = to_tokens(ids, block_tokens)
        part = 0 if i < half else 1
        t0 = time.perf_counter()
        try:
            n = ns.lookup(toks)
            slowest = max(slowest, time.perf_counter() - t0)
            if n:
                got, blocks = ns.get_blocks(toks)
                n = got
                for j, block in enumerate(blocks):  # what came back is the right block
                    if bytes(block[:1]) != bytes([int(ids[j]) % 251]):
                        raise AssertionError(f"request {i}: block {j} has the wrong content")
            hits[part] += n // block_tokens
            ns.put_blocks(toks, [payload(int(h), block_bytes) for h in ids])
        except AssertionError:
            raise
        except Exception:
            errors += 1
        requested[part] += len(ids)
        if progress is not None:
            progress.update(1)
    return {"hits": hits, "requested": requested, "errors": errors, "slowest_lookup_s": slowest}


def get_throughput(url: str, layout: KVLayout, prompts, block_tokens: int, threads: int,
                   seconds: float) -> tuple[float, float]:
    """GETs/s and GB/s of ``threads`` threads reading ``prompts`` (all cached) for ``seconds``."""
    client = KVClient.connect(url)
    ns = client.namespace(layout)
    stop = threading.Event()
    counts = [0] * threads
    nbytes = [0] * threads

    for ids in prompts:  # warm-up pass, untimed: a node that reads through fetches once
        ns.get_blocks(to_tokens(ids, block_tokens))

    def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            toks = to_tokens(prompts[i % len(prompts)], block_tokens)
            n, blocks = ns.get_blocks(toks)
            counts[k] += 1
            nbytes[k] += sum(len(b) for b in blocks)
            i += threads

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    dt = time.perf_counter() - t0
    client.close()
    return sum(counts) / dt, sum(nbytes) / dt / 1e9


def balance(requests_by_node: dict[str, int], n: int) -> float:
    """The busiest node's share of the requests, times N (1.0: even)."""
    total = sum(requests_by_node.values())
    return max(requests_by_node.values()) * n / total if total else 0.0


def run_config(n: int, args, prompts, layout: KVLayout, block_bytes: int, node_mb: int,
               read_set: list, kill: bool) -> dict:
    setup = Setup(n, node_mb, replicas=n, hot_threshold=args.hot_threshold, ttl=args.ttl)
    try:
        client = KVClient.connect(setup.url)
        assert wait_until(lambda: len(client.backend.nodes()) == n, 30), "nodes did not join"
        ns = client.namespace(layout)
        victim = setup.nodes[-1]
        progress = _progress(len(prompts), f"{n} node{'s' if n > 1 else ''}"
                             + (" (kill one)" if kill else ""))
        t0 = time.perf_counter()
        result = replay(ns, prompts, args.block_tokens, block_bytes,
                        kill=victim.kill if kill else None,
                        kill_at=len(prompts) // 2 if kill else -1, progress=progress)
        replay_s = time.perf_counter() - t0
        if progress is not None:
            progress.close()
        row = {
            "nodes": n,
            "node_mb": node_mb,
            "requests": len(prompts),
            "hit_rate": sum(result["hits"]) / sum(result["requested"]),
            "hit_rate_2nd_half": result["hits"][1] / max(1, result["requested"][1]),
            "errors": result["errors"],
            "slowest_lookup_s": result["slowest_lookup_s"],
            "replay_s": replay_s,
            "hot_prefixes": len(client.backend.view.snapshot().hot),
        }
        if not kill:
            row["balance"] = balance(client.backend.requests_by_node, n)
            cluster_rate, cluster_gbps = get_throughput(setup.url, layout, read_set,
                                                        args.block_tokens, args.threads,
                                                        args.seconds)
            direct = setup.nodes[0].url("tcp")
            direct_rate, direct_gbps = get_throughput(direct, layout, read_set, args.block_tokens,
                                                      args.threads, args.seconds)
            row.update(get_per_s=cluster_rate, get_gbps=cluster_gbps,
                       direct_get_per_s=direct_rate, direct_get_gbps=direct_gbps,
                       ratio=cluster_rate / direct_rate if direct_rate else 0.0)
        client.close()
        return row
    finally:
        setup.close()


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, leave=False, mininterval=1.0)


def _netns_config(n: int, args, cut: bool) -> list[dict]:
    from tests.cluster.netns import NetCluster

    with NetCluster(nodes=n, name=f"bench{n}", rate=args.rate, cpu_bytes="256MiB") as net:
        net.ask(f"wait {n}")
        filled = net.ask(f"fill {args.prompts} 1 4")
        gets = net.ask(f"gets {args.seconds} {args.threads}")
        rows = [{"scenario": "steady", "nodes": n, "rate": args.rate, "prompts": filled["acked"],
                 "get_per_s": gets["gets_per_s"], "get_mbps": gets["gbps"] * 1000,
                 "hit_rate": gets["hit_rate"], "balance": balance(gets["by_node"], n)}]
        if not cut:
            return rows
        victim = net.node_id(net.node_names[-1])
        phases = {"before": net.ask(f"measure 3 {victim}")}
        net.hosts.link_down(net.node_names[-1])
        phases["during"] = net.ask(f"measure {args.cut_seconds} {victim}")
        net.hosts.heal()
        time.sleep(1)
        phases["after"] = net.ask(f"measure 5 {victim}")
        for name, m in phases.items():
            rows.append({"scenario": f"cut: {name}", "nodes": n, "hit_rate": m["hit_rate"],
                         "lookups": m["count"], "p50_ms": m["p50"] * 1e3,
                         "p99_ms": m["p99"] * 1e3, "max_ms": m["max"] * 1e3,
                         "healthy_p99_ms": m["healthy_p99"] * 1e3})
        return rows


def main_netns(args) -> list[dict]:
    from tests.cluster.netns import available

    why = available()
    if why is not None:
        raise SystemExit(f"--netns: {why}")
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    rows = []
    for n in sizes:
        rows += _netns_config(n, args, cut=n == max(sizes) and n > 1 and not args.no_loss)
    one = next((r["get_per_s"] for r in rows if r["nodes"] == 1), None)
    for r in rows:
        if one and r["scenario"] == "steady":
            r["speedup"] = r["get_per_s"] / one
    print_table(rows, ["scenario", "nodes", "get_per_s", "get_mbps", "speedup", "hit_rate",
                       "balance", "lookups", "p50_ms", "p99_ms", "max_ms", "healthy_p99_ms"])
    if args.json:
        path = Path(args.json)
        doc = json.loads(path.read_text()) if path.exists() else {"benchmark": "cluster"}
        doc["netns"] = {"rate": args.rate, "prompts": args.prompts, "threads": args.threads,
                        "rows": rows}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return rows


def main(argv=None) -> list[dict]:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1,2,3", help="cluster sizes (comma-separated)")
    p.add_argument("--trace", default=str(TRACE))
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--block-tokens", type=int, default=16)
    p.add_argument("--node-share", type=float, default=0.05,
                   help="CPU arena of each daemon, as a share of the trace's unique blocks")
    p.add_argument("--node-mb", type=int, help="CPU arena of each daemon (MiB; overrides share)")
    p.add_argument("--hot-threshold", type=int, default=16)
    p.add_argument("--ttl", type=int, default=3, help="membership lease TTL (s)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--no-loss", action="store_true", help="skip the node-loss run")
    p.add_argument("--netns", action="store_true",
                   help="separate hosts (network namespaces, tbf per host); root only")
    p.add_argument("--rate", default="30mbit", help="--netns: tbf rate per daemon host")
    p.add_argument("--prompts", type=int, default=300, help="--netns: cached prompts read")
    p.add_argument("--cut-seconds", type=float, default=8.0, help="--netns: length of the cut")
    args = p.parse_args(argv)
    if args.netns:
        return main_netns(args)
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    prompts = load_prompts(Path(args.trace), args.requests)
    layout = KVLayout(model_id="bench-cluster", num_layers=2, num_kv_heads=4, head_dim=64,
                      dtype="float16", block_tokens=args.block_tokens)
    block_bytes = layout.num_layers * 2 * args.block_tokens * layout.num_kv_heads * \
        layout.head_dim * 2
    seen: set[int] = set()
    reusable = 0
    for ids in prompts:  # leading blocks seen before (hash ids are chained)
        lead = 0
        while lead < len(ids) and int(ids[lead]) in seen:
            lead += 1
        reusable += lead
        seen.update(int(h) for h in ids)
    ceiling = reusable / sum(len(p) for p in prompts)
    unique_mb = len(seen) * block_bytes / 2**20
    node_mb = args.node_mb or max(16, int(unique_mb * args.node_share))
    read_set, read_blocks = [], 0  # the last prompts, a quarter of one node's memory
    for ids in reversed(prompts):
        if read_set and (read_blocks + len(ids)) * block_bytes > node_mb * 2**20 // 4:
            break
        read_set.append(ids)
        read_blocks += len(ids)
    print(f"trace {Path(args.trace).name}: {len(prompts)} requests, {len(seen)} unique blocks "
          f"of {block_bytes // 1024} KiB ({unique_mb:.0f} MiB); hit-rate ceiling (infinite "
          f"cache) {ceiling:.3f}; each node holds {node_mb} MiB "
          f"({node_mb / unique_mb:.1%} of the unique blocks); GET phase reads "
          f"{len(read_set)} prompts ({read_blocks} blocks)")
    rows = [run_config(n, args, prompts, layout, block_bytes, node_mb, read_set, kill=False)
            for n in sizes]
    if not args.no_loss and max(sizes) > 1:
        loss = run_config(max(sizes), args, prompts, layout, block_bytes, node_mb, read_set,
                          kill=True)
        same = next(r for r in rows if r["nodes"] == max(sizes))
        loss["hit_rate_2nd_half_no_kill"] = same["hit_rate_2nd_half"]
        loss["scenario"] = "node loss"
        rows.append(loss)
    for r in rows:
        r.setdefault("scenario", "steady")
        r["hit_rate_ceiling"] = ceiling
    print_table(rows, ["scenario", "nodes", "hit_rate", "hit_rate_2nd_half",
                       "hit_rate_2nd_half_no_kill", "balance", "get_per_s", "direct_get_per_s",
                       "ratio", "get_gbps", "errors", "slowest_lookup_s", "hot_prefixes"])
    if args.json:
        write_json(args.json, "cluster", rows, trace=Path(args.trace).name,
                   block_bytes=block_bytes, hit_rate_ceiling=ceiling)
    return rows


if __name__ == "__main__":
    main()
