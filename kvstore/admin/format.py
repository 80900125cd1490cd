"""Human-readable output of ``kvstore admin``: aligned tables and one-line summaries."""

from __future__ import annotations

import json

from kvstore.sizes import format_size


def table(columns: list[str], rows: list[list]) -> str:
    """Left-aligned text columns, numbers right-aligned; '(none)' when there are no rows."""
    if not rows:
        return "(none)"
    cells = [[str(c) for c in columns]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(columns))]
    lines = []
    for r in cells:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _size(n: int) -> str:
    return format_size(int(n))


def stats(doc: dict) -> str:
    tiers = [
        [t["name"], t["policy"] or "-", _size(t["capacity_bytes"]), _size(t["used_bytes"]),
         t["blocks"], t["hits"], t["misses"], t["evictions"], t["demotions"], t["promotions"],
         _size(t["bytes_in"]), _size(t["bytes_out"]), "degraded" if t["degraded"] else "ok"]
        for t in doc["tiers"]
    ]
    out = [table(["tier", "policy", "capacity", "used", "blocks", "hits", "misses", "evictions",
                  "demotions", "promotions", "in", "out", "health"], tiers), ""]
    out.append(namespaces(doc))
    if doc.get("tenants"):
        out.append("")
        out.append(tenants(doc))
    pins, server = doc["pins"], doc["server"]
    out.append("")
    out.append(f"pins: {len(pins['pins'])} holding {_size(pins['pinned_bytes'])} "
               f"of a {_size(pins['budget_bytes'])} budget")
    out.append(f"server: {server['state']}{', writes drained' if server['draining'] else ''}, "
               f"{server['connections']} connections, {server['requests']} requests, "
               f"{server['errors']} errors, up {server['uptime_seconds']:.0f}s")
    return "\n".join(out)


def tenants(doc: dict) -> str:
    rows = [[t["tenant"] or "-", _size(t["cpu_used_bytes"]), _size(t["cpu_quota_bytes"]),
             _size(t["ssd_used_bytes"]), _size(t["ssd_quota_bytes"])] for t in doc["tenants"]]
    return table(["tenant", "cpu used", "cpu quota", "ssd used", "ssd quota"], rows)


def quota(doc: dict) -> str:
    return tenants({"tenants": [doc["tenant"]]}) if doc.get("tenant") else "quota set"


def namespaces(doc: dict) -> str:
    rows = []
    for n in doc["namespaces"]:
        ns = n["namespace"]
        rows.append([ns["id"], ns["model_id"], ns["tenant"] or "-", ns["dtype"],
                     ns["block_tokens"], _size(ns["block_bytes"]), n["blocks"], _size(n["bytes"]),
                     n["hits"], n["misses"], n.get("lookup_hits", 0), n.get("lookup_misses", 0),
                     _size(n["pinned_bytes"])])
    out = table(["namespace", "model", "tenant", "dtype", "block_tokens", "block", "blocks",
                 "bytes", "hits", "misses", "lookup hits", "lookup misses", "pinned"], rows)
    return "\n".join([out, *_hit_rates(doc["namespaces"])])


def _hit_rates(rows: list[dict]) -> list[str]:
    """One line per kind of request that happened: blocks found / asked for, all namespaces.

    Reads (get, get_into, read leases) count hits and misses; lookups count
    theirs apart, since an engine such as vLLM looks a prompt up and then reads
    only the blocks found (its misses show in the lookups).
    """
    lines = []
    for what, hit, miss in (("lookups", "lookup_hits", "lookup_misses"),
                            ("reads", "hits", "misses")):
        found = sum(int(n.get(hit, 0)) for n in rows)
        asked = found + sum(int(n.get(miss, 0)) for n in rows)
        if asked:
            lines.append(f"{what}: {found} of {asked} blocks found ({100.0 * found / asked:.1f} %)")
    return lines


def evict(doc: dict) -> str:
    kept = f" ({doc['skipped']} pinned or in use kept)" if doc["skipped"] else ""
    return f"evicted {doc['blocks']} blocks ({_size(doc['bytes'])}){kept}"


def flush(doc: dict) -> str:
    if not doc["ssd"]:
        return "no SSD tier: nothing to flush"
    return f"flushed to SSD in {doc['seconds']:.3f}s"


def pin(doc: dict) -> str:
    p = doc["pin"]
    return (f"pinned {p['tokens']} tokens ({_size(p['bytes'])}) of {p['namespace']}; "
            f"{_size(doc['pinned_bytes'])} of {_size(doc['budget_bytes'])} pinned")


def unpin(doc: dict) -> str:
    p = doc["pin"]
    return (f"unpinned {p['tokens']} tokens of {p['namespace']}; "
            f"{_size(doc['pinned_bytes'])} still pinned")


def policy(doc: dict) -> str:
    return f"{doc['tier']}: eviction policy {doc['previous']} -> {doc['policy']}"


def policies(stats_doc: dict, config_doc: dict) -> str:
    rows = [[t["name"], t["policy"]] for t in stats_doc["tiers"] if t["policy"]]
    return (table(["tier", "policy"], rows)
            + f"\navailable: {', '.join(config_doc['policies'])}")


def drain(doc: dict) -> str:
    line = "writes refused (draining); reads keep working" if doc["draining"] else (
        "writes accepted again")
    return line + ("; daemon shutting down" if doc["shutting_down"] else "")


def flatten(settings: dict, prefix: str = "") -> dict:
    """Nested tables as dotted keys: ``{"limits": {"max_connections": 8}}`` -> ``limits.max_connections``."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config(doc: dict) -> str:
    settings = flatten(json.loads(doc["config_json"]))
    rows = [[k, json.dumps(v), doc["source"].get(k, "default")] for k, v in sorted(settings.items())]
    head = (f"kvstore {doc['version']}  carriers: {' '.join(doc['urls'])}  admin: {doc['admin']}"
            f"  metrics: {doc['metrics'] or '-'}")
    return head + "\n" + table(["setting", "value", "from"], rows)


def cluster(doc: dict) -> str:
    if not doc.get("enabled"):
        return "not clustered (start the daemon with --etcd URL --cluster NAME)"
    etcd = "ok" if doc.get("etcd_ok") else "UNREACHABLE (last known membership)"
    head = (f"cluster {doc['cluster']} at {doc['etcd']} (etcd {etcd}); this node: "
            f"{doc['node_id']}{'' if doc.get('registered') else ' (not registered)'}")
    rows = []
    for n in doc.get("nodes", []):
        rows.append([("* " if n.get("self") else "  ") + n["node_id"], " ".join(n.get("urls", [])),
                     n.get("lease_id", ""), f"{n.get('lease_ttl', 0)}s",
                     f"{_size(int(n.get('used_bytes', 0)))} / {_size(int(n.get('capacity_bytes', 0)))}",
                     n.get("blocks", 0), n.get("requests", 0)])
    out = [head, table(["node", "urls", "lease", "ttl", "used / capacity", "blocks", "requests"],
                       rows)]
    hot = doc.get("hot", [])
    if hot:
        out.append(table(["hot prefix", "replicas", "blocks", "hits", "marked by"],
                         [[h["route_key"][:16], h["replicas"], h["prefix_blocks"], h["hits"],
                           h["marked_by"]] for h in hot]))
    counters = doc.get("counters", {})
    if counters:
        out.append("  ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return "\n".join(out)
