"""The ``kvstore`` command line: ``kvstore serve``, ``kvstore admin ...``, ``kvstore version``."""

from __future__ import annotations

import argparse
import sys

import kvstore
from kvstore.admin.cli import add_admin


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the daemon (loopback listeners and a sized store by default)",
        description="Run the kvstore daemon. Settings: flags > KVSTORE_* env > TOML file > "
        "defaults (see kvstore/daemon/config.py).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--listen", metavar="URL", action="append",
                   help="shm://PATH, tcp://HOST:PORT or ucx://HOST:PORT (repeatable)")
    p.add_argument("--admin", metavar="HOST:PORT", help="admin gRPC address ('' turns it off)")
    p.add_argument("--admin-token-file", metavar="FILE",
                   help="token the admin API requires (authorization: Bearer TOKEN)")
    p.add_argument("--pin-budget", metavar="SIZE",
                   help="bytes the admin API may pin resident (default: a quarter of --cpu-bytes)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="Prometheus metrics address ('' turns it off)")
    p.add_argument("--cpu-bytes", metavar="SIZE", help="CPU arena size (4GiB, ...)")
    p.add_argument("--ssd-dir", metavar="DIR", help="SSD tier folder")
    p.add_argument("--ssd-bytes", metavar="SIZE", help="SSD tier size (0 disables it)")
    p.add_argument("--auth-token-file", metavar="FILE",
                   help="token (or TENANT:TOKEN lines) a client must present in its hello")
    t = p.add_argument_group("tenants and trust", "kvstore/OPERATIONS.md, Tenants and trust")
    t.add_argument("--admin-insecure", action="store_true", default=None,
                   help="with --auth-token-file, run the admin API without a token (warned)")
    t.add_argument("--metrics-tenant-labels", action="store_true", default=None,
                   help="label namespace metrics with tenant names (off: the label is empty)")
    t.add_argument("--shm-allow-uid", metavar="UID", action="append",
                   help="a uid that may use the shm socket (repeatable; default: the daemon's)")
    t.add_argument("--tenant-quota", metavar="SPEC",
                   help="per-tenant quotas: alice=cpu:1GiB,ssd:10GiB;bob=cpu:512MiB")
    t.add_argument("--tenant-cpu-bytes", metavar="SIZE", help="default CPU quota of a tenant")
    t.add_argument("--tenant-ssd-bytes", metavar="SIZE", help="default SSD quota of a tenant")
    t.add_argument("--write-behind-seconds", type=float, metavar="S",
                   help="puts reach the SSD tier within about this lag (0: on eviction only)")
    t.add_argument("--write-lease-seconds", type=float, metavar="S",
                   help="uncommitted write leases are taken back after this (default 600)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                   help="how long SIGTERM waits for in-flight requests")
    c = p.add_argument_group("cluster", "join other daemons through etcd (docs/cluster.md)")
    c.add_argument("--etcd", metavar="URL", help="etcd client endpoint http://HOST:PORT")
    c.add_argument("--cluster", metavar="NAME", help="cluster name (default: default)")
    c.add_argument("--advertise", metavar="URL", action="append",
                   help="URL peers and clients reach this node on (repeatable; "
                   "default: the listeners)")
    c.add_argument("--node-id", metavar="ID", help="this node's id (default: kept in the SSD dir)")
    c.add_argument("--cluster-ttl", type=int, metavar="SECONDS",
                   help="membership lease TTL: a dead node leaves within it (default 5)")
    c.add_argument("--replicas", type=int, metavar="N", help="nodes serving a hot prefix")
    c.add_argument("--hot-threshold", type=int, metavar="HITS",
                   help="read hits in a minute that make a prefix hot (default 16)")
    c.add_argument("--peer-timeout", type=float, metavar="SECONDS",
                   help="deadline of a request to a peer (default 0.3)")
    c.add_argument("--rebalance-rate", metavar="BYTES",
                   help="bytes/s pushed to a node that joins (default 64MiB)")


def run_serve(args) -> int:
    from kvstore.daemon.config import load_config
    from kvstore.daemon.daemon import serve
    from kvstore.errors import KVStoreError

    flags = {
        "listen": args.listen, "admin": args.admin, "metrics": args.metrics,
        "admin_token_file": args.admin_token_file, "pin_budget": args.pin_budget,
        "cpu_bytes": args.cpu_bytes, "ssd_dir": args.ssd_dir, "ssd_bytes": args.ssd_bytes,
        "auth_token_file": args.auth_token_file, "log_level": args.log_level,
        "log_format": args.log_format, "drain_timeout": args.drain_timeout,
        "etcd": args.etcd, "cluster": args.cluster, "advertise": args.advertise,
        "node_id": args.node_id, "cluster_ttl": args.cluster_ttl, "replicas": args.replicas,
        "hot_threshold": args.hot_threshold,
        "admin_insecure": args.admin_insecure, "metrics_tenant_labels": args.metrics_tenant_labels,
        "shm_allow_uids": args.shm_allow_uid, "tenant_quota": args.tenant_quota,
        "tenant_cpu_bytes": args.tenant_cpu_bytes, "tenant_ssd_bytes": args.tenant_ssd_bytes,
        "write_behind_seconds": args.write_behind_seconds,
        "write_lease_seconds": args.write_lease_seconds,
        "peer_timeout": args.peer_timeout, "rebalance_rate": args.rebalance_rate,
    }
    try:
        config = load_config(flags, args.config)
    except KVStoreError as exc:
        sys.stderr.write(f"kvstore serve: {exc}\n")
        return 2
    return serve(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    add_serve(sub)
    add_admin(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(kvstore.__version__)
        return 0
    if args.command == "serve":
        return run_serve(args)
    if args.command == "admin":
        from kvstore.admin.cli import run_admin

        return run_admin(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
