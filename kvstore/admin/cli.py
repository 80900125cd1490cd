"""``kvstore admin VERB``: the admin API from the command line.

    kvstore admin stats|namespaces|flush|config   [--addr HOST:PORT] [--token-file F] [--json]
    kvstore admin evict NAMESPACE [--tokens 1,2,3 | --tokens-file F] [--extra HEX]
    kvstore admin pin|unpin NAMESPACE (--tokens ... | --tokens-file F) [--extra HEX]
    kvstore admin quota TENANT [--cpu SIZE] [--ssd SIZE]
    kvstore admin policy [TIER POLICY]             (no arguments: show the policies)
    kvstore admin drain [--resume | --shutdown]

``--addr`` defaults to ``$KVSTORE_ADMIN`` or 127.0.0.1:7803, ``--token-file``
to ``$KVSTORE_ADMIN_TOKEN_FILE``. Output is a table (or one line) for people,
JSON with ``--json``. Exit codes: 0 done, 1 the daemon refused (the status and
its message on one stderr line), 2 bad usage, 3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvstore.admin import format as fmt
from kvstore.sizes import parse_size

DEFAULT_ADDR = "127.0.0.1:7803"


class UsageError(Exception):
    pass


def add_admin(sub) -> None:
    p = sub.add_parser("admin", help="talk to a running daemon's admin API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", metavar="HOST:PORT",
                        default=os.environ.get("KVSTORE_ADMIN") or DEFAULT_ADDR,
                        help="admin address (default $KVSTORE_ADMIN or %(default)s)")
    common.add_argument("--token-file", metavar="FILE",
                        default=os.environ.get("KVSTORE_ADMIN_TOKEN_FILE"),
                        help="admin token file (default $KVSTORE_ADMIN_TOKEN_FILE)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    prefix = argparse.ArgumentParser(add_help=False)
    prefix.add_argument("namespace", help="namespace id in hex (or a unique prefix)")
    prefix.add_argument("--tokens", metavar="LIST", help="token ids: 1,2,3 or '1 2 3'")
    prefix.add_argument("--tokens-file", metavar="FILE",
                        help="token ids as a JSON list or separated by spaces/commas ('-': stdin)")
    prefix.add_argument("--extra", metavar="HEX", default="", help="the prefix's key salt")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("stats", parents=[common], help="tiers, namespaces, pins, server counters")
    verbs.add_parser("namespaces", parents=[common], help="registered namespaces")
    verbs.add_parser("evict", parents=[common, prefix],
                     help="drop a namespace's blocks (or those under --tokens)")
    verbs.add_parser("flush", parents=[common], help="make acknowledged blocks durable on SSD")
    verbs.add_parser("pin", parents=[common, prefix], help="keep a cached prefix resident")
    verbs.add_parser("unpin", parents=[common, prefix], help="release a pin")
    quo = verbs.add_parser("quota", parents=[common], help="set a tenant's byte quotas")
    quo.add_argument("tenant", help="the tenant ('' for the default tenant)")
    quo.add_argument("--cpu", metavar="SIZE", help="CPU quota (4GiB, ...)")
    quo.add_argument("--ssd", metavar="SIZE", help="SSD quota")
    pol = verbs.add_parser("policy", parents=[common], help="show or set a tier's eviction policy")
    pol.add_argument("tier", nargs="?", help="cpu or gpu")
    pol.add_argument("policy", nargs="?", help="a registered policy name")
    dr = verbs.add_parser("drain", parents=[common], help="refuse new writes (reads keep working)")
    mode = dr.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="accept writes again")
    mode.add_argument("--shutdown", action="store_true", help="then stop the daemon gracefully")
    verbs.add_parser("config", parents=[common], help="the daemon's effective settings")
    verbs.add_parser("cluster", parents=[common],
                     help="cluster members (leases, usage) and hot prefixes, as this node sees them")


def parse_tokens(text: str) -> list[int]:
    text = text.strip()
    try:
        values = json.loads(text) if text.startswith("[") else text.replace(",", " ").split()
        tokens = [int(v) for v in values]
    except (ValueError, TypeError):
        raise UsageError("tokens must be integers (1,2,3 or a JSON list)") from None
    if any(not 0 <= t < 1 << 32 for t in tokens):
        raise UsageError("token ids must fit in uint32")
    return tokens


def read_tokens(args) -> list[int]:
    if args.tokens is not None and args.tokens_file:
        raise UsageError("give --tokens or --tokens-file, not both")
    if args.tokens_file:
        try:
            if args.tokens_file == "-":
                return parse_tokens(sys.stdin.read())
            with open(args.tokens_file) as f:
                return parse_tokens(f.read())
        except OSError as exc:
            raise UsageError(f"cannot read {args.tokens_file}: {exc.strerror}") from None
    return parse_tokens(args.tokens) if args.tokens is not None else []


def prefix_fields(args, required: bool) -> dict:
    tokens = read_tokens(args)
    if required and not tokens:
        raise UsageError(f"{args.verb} needs --tokens or --tokens-file")
    try:
        extra = bytes.fromhex(args.extra)
    except ValueError:
        raise UsageError("--extra must be hex") from None
    return {"namespace": args.namespace, "tokens": tokens, "extra": extra}


def execute(admin, args) -> tuple[dict, str]:
    """Run the verb: (the reply as a dict, its human rendering)."""
    verb = args.verb
    if verb == "stats":
        doc = admin.call("GetStats")
        return doc, fmt.stats(doc)
    if verb == "quota":
        fields = {"tenant": args.tenant}
        if args.cpu is not None:
            fields["cpu_bytes"] = parse_size(args.cpu)
        if args.ssd is not None:
            fields["ssd_bytes"] = parse_size(args.ssd)
        if len(fields) == 1:
            raise UsageError("quota needs --cpu SIZE and/or --ssd SIZE")
        doc = admin.call("SetQuota", **fields)
        return doc, fmt.quota(doc)
    if verb == "namespaces":
        doc = admin.call("ListNamespaces")
        return doc, fmt.namespaces(doc)
    if verb == "evict":
        doc = admin.call("Evict", **prefix_fields(args, required=False))
        return doc, fmt.evict(doc)
    if verb == "flush":
        doc = admin.call("Flush")
        return doc, fmt.flush(doc)
    if verb in ("pin", "unpin"):
        doc = admin.call(verb.capitalize(), prefix=prefix_fields(args, required=True))
        return doc, (fmt.pin if verb == "pin" else fmt.unpin)(doc)
    if verb == "policy":
        if args.tier is None:
            stats, config = admin.call("GetStats"), admin.call("GetConfig")
            doc = {"tiers": {t["name"]: t["policy"] for t in stats["tiers"] if t["policy"]},
                   "available": config["policies"]}
            return doc, fmt.policies(stats, config)
        if args.policy is None:
            raise UsageError("policy needs TIER and POLICY (or neither, to show them)")
        doc = admin.call("SetEvictionPolicy", tier=args.tier, policy=args.policy)
        return doc, fmt.policy(doc)
    if verb == "drain":
        doc = admin.call("Drain", resume=args.resume, shutdown=args.shutdown)
        return doc, fmt.drain(doc)
    if verb == "cluster":
        doc = admin.call("GetCluster")
        return doc, fmt.cluster(doc)
    doc = admin.call("GetConfig")
    doc["config"] = json.loads(doc.pop("config_json"))
    return doc, fmt.config({**doc, "config_json": json.dumps(doc["config"])})


def run_admin(args) -> int:
    from kvstore.admin.auth import read_token
    from kvstore.admin.client import AdminClient, AdminError
    from kvstore.errors import KVStoreError

    def fail(message: str, code: int) -> int:
        sys.stderr.write(f"kvstore admin {args.verb}: {message}\n")
        return code

    try:
        token = read_token(args.token_file) if args.token_file else None
    except KVStoreError as exc:
        return fail(str(exc), 2)
    try:
        with AdminClient(args.addr, token, args.timeout) as admin:
            doc, text = execute(admin, args)
    except UsageError as exc:
        return fail(str(exc), 2)
    except AdminError as exc:
        if exc.unreachable:
            return fail(f"admin API at {args.addr} unavailable ({exc})", 3)
        return fail(str(exc), 1)
    sys.stdout.write((json.dumps(doc, indent=2, sort_keys=True) if args.json else text) + "\n")
    return 0
