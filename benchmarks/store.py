"""CPU tier throughput of the TieredStore against memcpy of the same bytes.

    python -m benchmarks.store [--sizes 1MiB,4MiB,16MiB] [--total 256MiB] [--json PATH]

For each block size, ``total`` bytes of blocks (one prompt of ``total /
block`` blocks) go through:

* ``put``       ``TieredStore.put`` of preallocated payloads (copy into the arena)
* ``lease_put`` ``lease_write`` + copy into the slots + ``commit_lease``
* ``get``       ``TieredStore.get`` (a new ``bytes`` object per block: allocation included)
* ``get_into``  ``TieredStore.get_into`` into one preallocated buffer (``alloc`` slices it)
* ``lease_get`` ``lease_read`` + copy each slot into one preallocated buffer + ``release``

The baseline of every row is memcpy of the same bytes in the same block-sized
pieces (``numpy`` copy between two preallocated, pre-faulted buffers),
measured in the same run, interleaved with the ops round by round (best
round of each); ``ratio = gbps / baseline``. The SSD tier's rows
come from ``benchmarks.store_ssd.ssd_rows`` when that module exists.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from benchmarks.common import base_parser, gbps, machine_info, print_table, write_json
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.sizes import format_size, parse_size
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore


def _spec(block_bytes: int) -> NamespaceSpec:
    # 32 layers x 2 x 16 tokens x 8 heads x D x 2 bytes = block_bytes
    dim = block_bytes // (32 * 2 * 16 * 8 * 2)
    return NamespaceSpec(KVLayout("bench", 32, 8, dim, "float16", 16))


def _time(fn, setup=None) -> float:
    if setup is not None:
        setup()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_rows(block_bytes: int, total: int, repeat: int = 5) -> list[dict]:
    n = max(1, total // block_bytes)
    total = n * block_bytes
    spec = _spec(block_bytes)
    src = np.random.default_rng(0).integers(0, 256, total, dtype=np.uint8)
    dst = np.empty(total, dtype=np.uint8)
    dst.fill(1)
    blocks = [src[i * block_bytes : (i + 1) * block_bytes] for i in range(n)]
    outs = [dst[i * block_bytes : (i + 1) * block_bytes] for i in range(n)]

    def memcpy():
        for a, b in zip(outs, blocks):
            np.copyto(a, b)

    store = TieredStore(StoreConfig(cpu_bytes=total + 4 * block_bytes + (64 << 20)))
    rows = []
    try:
        ns = store.register(spec)
        tokens = np.arange(n * spec.block_tokens, dtype=np.uint32)
        store.put(ns, tokens, blocks)  # fault the arena pages in once

        def clear():
            store.delete(ns, tokens)

        def lease_put():
            lease = store.lease_write(ns, tokens)
            for j, slot in enumerate(lease.slots):
                store.read_slot(slot)[:] = blocks[lease.first_block + j]
            store.commit_lease(lease.lease_id)

        def get():
            assert store.get(ns, tokens)[0] == len(tokens)

        def get_into():
            assert store.get_into(ns, tokens, lambda nbytes: dst[:nbytes])[0] == len(tokens)

        def lease_get():
            lease = store.lease_read(ns, tokens)
            for out, slot in zip(outs, lease.slots):
                out[:] = store.read_slot(slot)  # memcpy
            store.release(lease.lease_id)

        def put():
            store.put(ns, tokens, blocks)

        # interleaved rounds: every op and the baseline see the same machine load
        ops = {"memcpy": (memcpy, None), "put": (put, clear), "lease_put": (lease_put, clear),
               "get": (get, None), "get_into": (get_into, None), "lease_get": (lease_get, None)}
        best = dict.fromkeys(ops, float("inf"))
        for round_ in range(repeat + 1):  # round 0 warms up
            for op, (fn, setup) in ops.items():
                if op.startswith("get") or op == "lease_get":
                    if store.lookup(ns, tokens) != len(tokens):
                        put()
                seconds = _time(fn, setup)
                if round_:
                    best[op] = min(best[op], seconds)
        timings = {op: t for op, t in best.items() if op != "memcpy"}
        baseline = gbps(total, best["memcpy"])
        assert np.array_equal(dst, src)
        for op, seconds in timings.items():
            speed = gbps(total, seconds)
            rows.append({"name": f"cpu_{op}", "op": op, "block_bytes": block_bytes,
                         "gbps": speed, "baseline": baseline, "ratio": speed / baseline})
    finally:
        store.close()
    return rows


def ssd_rows_if_available(block_bytes: int, total: int, directory: str | None) -> list[dict]:
    try:
        from benchmarks.store_ssd import ssd_rows
    except ImportError:
        return []
    with tempfile.TemporaryDirectory(dir=directory, prefix="kvstore-bench-") as d:
        rows = list(ssd_rows(d, block_bytes, total))
    for row in rows:  # one row shape for the whole table: a numeric baseline
        if isinstance(row.get("baseline"), str) and "baseline_gbps" in row:
            row["baseline_tool"] = row["baseline"]
            row["baseline"] = row.pop("baseline_gbps")
    return rows


def main(argv=None) -> list[dict]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1MiB,4MiB,16MiB", help="block sizes, comma separated")
    parser.add_argument("--total", default="256MiB", help="bytes moved per measurement")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ssd-dir", default=None, help="directory for the SSD rows (default: tmp)")
    parser.add_argument("--no-ssd", action="store_true", help="skip the SSD tier rows")
    args = parser.parse_args(argv)
    total = parse_size(args.total)
    rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        rows += cpu_rows(size, total, args.repeat)
        if not args.no_ssd:
            rows += ssd_rows_if_available(size, total, args.ssd_dir)
    print_table(rows, ["name", "op", "block_bytes", "gbps", "baseline", "ratio"],
                title=f"store: {format_size(total)} per measurement, {machine_info()['cpus']} CPUs")
    if args.json:
        write_json(args.json, "store", rows)
    return rows


if __name__ == "__main__":
    main()
