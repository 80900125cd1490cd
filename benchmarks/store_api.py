"""The embedded store through its public API, beside memcpy and a plain disk read, in one run.

    python -m benchmarks.store_api [--blocks 64] [--block-bytes 2MiB] [--rounds 7] [--json PATH]

Memory rows (``KVClient.connect("embedded")``, CPU tier large enough): each
op moves ``blocks`` blocks of ``block_bytes`` (one prompt), every GET checked
byte for byte after the timing:

* ``ns_put``      ``Namespace.put`` of one KV tensor (the prefix deleted before each round)
* ``ns_get``      ``Namespace.get`` (allocates the returned tensor)
* ``ns_get_into`` ``Namespace.get_into`` into a preallocated tensor
* ``store_put`` / ``store_get_into``: ``TieredStore.put`` / ``get_into`` of the same bytes

Baseline: numpy memcpy of the same bytes in the same block-sized pieces,
between two preallocated, pre-faulted buffers; ``ratio = gbps / baseline``.

SSD row (``ssd_get_into``): a store whose CPU tier holds 4 blocks and whose
SSD tier holds the prompt (written by a first store and closed: the second
finds every block on SSD only; the segment files dropped from the page cache
before every round): ``TieredStore.get_into``
of the whole prompt into a preallocated buffer, with ``promote_on_get`` off so
every round reads the disk. Baseline: ``dd iflag=direct`` of a file of the
same size on the same filesystem (``benchmarks.store_ssd._DD``), alternating
with ours round by round.

Ops and baselines are interleaved round by round; each figure is the median
of ``rounds`` (after one warm-up round). The load average is printed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import base_parser, gbps, print_table, write_json
from benchmarks.store_ssd import _DD, _drop_cache
from kvstore.client import KVClient
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.sizes import parse_size
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore


def _layout(block_bytes: int) -> KVLayout:
    # 32 layers x 2 x 16 tokens x 8 heads x D x 2 bytes = block_bytes
    return KVLayout("bench", 32, 8, block_bytes // (32 * 2 * 16 * 8 * 2), "float16", 16)


def _median_rows(times: dict[str, list[float]], nbytes: int, base: str) -> list[dict]:
    baseline = gbps(nbytes, statistics.median(times[base]))
    return [{"op": op, "gbps": gbps(nbytes, statistics.median(ts)), "baseline": base,
             "baseline_gbps": baseline, "ratio": gbps(nbytes, statistics.median(ts)) / baseline}
            for op, ts in times.items() if op != base]


def memory_rows(nblocks: int, block_bytes: int, rounds: int) -> list[dict]:
    layout = _layout(block_bytes)
    ntok = nblocks * layout.block_tokens
    nbytes = nblocks * block_bytes
    kv = torch.randint(-1000, 1000, (32, 2, ntok, 8, layout.head_dim), dtype=torch.int16)
    kv = kv.view(torch.float16)
    out = torch.empty_like(kv)
    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.ones(nbytes, dtype=np.uint8)
    pieces = [(dst[i : i + block_bytes], src[i : i + block_bytes])
              for i in range(0, nbytes, block_bytes)]
    raw = [src[i : i + block_bytes] for i in range(0, nbytes, block_bytes)]
    raw_out = np.ones(nbytes, dtype=np.uint8)
    tokens = np.arange(ntok, dtype=np.uint32)
    raw_tokens = tokens + 10_000_000
    client = KVClient.connect("embedded", cpu_bytes=3 * nbytes + (64 << 20))
    try:
        ns = client.namespace(layout)
        store: TieredStore = client.backend
        got = {}

        def memcpy():
            for a, b in pieces:
                np.copyto(a, b)

        def ns_put():
            assert ns.put(tokens, kv) == ntok

        def ns_get():
            got["get"] = ns.get(tokens)

        def ns_get_into():
            assert ns.get_into(tokens, out) == ntok

        def store_put():
            assert store.put(ns.id, raw_tokens, raw) == ntok

        def store_get_into():
            assert store.get_into(ns.id, raw_tokens, lambda n: raw_out[:n])[0] == ntok

        ops = {"memcpy": (memcpy, None),
               "ns_put": (ns_put, lambda: store.delete(ns.id, tokens)),
               "ns_get": (ns_get, None), "ns_get_into": (ns_get_into, None),
               "store_put": (store_put, lambda: store.delete(ns.id, raw_tokens)),
               "store_get_into": (store_get_into, None)}
        times: dict[str, list[float]] = {op: [] for op in ops}
        for r in range(rounds + 1):
            for op, (fn, setup) in ops.items():
                if setup is not None:
                    setup()
                t0 = time.perf_counter()
                fn()
                if r:
                    times[op].append(time.perf_counter() - t0)
        assert np.array_equal(dst, src) and np.array_equal(raw_out, src)
        assert torch.equal(out.view(torch.int16), kv.view(torch.int16))
        n, back = got["get"]
        assert n == ntok and torch.equal(back.view(torch.int16), kv.view(torch.int16))
    finally:
        client.close()
    return _median_rows(times, nbytes, "memcpy")


def ssd_rows(directory: str, nblocks: int, block_bytes: int, rounds: int) -> list[dict]:
    layout = _layout(block_bytes)
    ntok, nbytes = nblocks * layout.block_tokens, nblocks * block_bytes
    src = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
    blocks = [src[i : i + block_bytes] for i in range(0, nbytes, block_bytes)]
    dst = np.ones(nbytes, dtype=np.uint8)
    work = Path(tempfile.mkdtemp(prefix="kvstore-api-bench-", dir=directory))
    ddfile = work / "dd.bin"
    with open(ddfile, "wb") as f:
        f.write(src.tobytes())
        os.fsync(f.fileno())
    dd = _DD(ddfile, block_bytes)
    spec, tokens = NamespaceSpec(layout), np.arange(ntok, dtype=np.uint32)
    ssd = dict(ssd_dir=str(work / "ssd"), ssd_bytes=2 * nbytes + (256 << 20))
    with TieredStore(StoreConfig(cpu_bytes=nbytes + (64 << 20), **ssd)) as first:
        first.put(first.register(spec), tokens, blocks)
        first.flush()  # on SSD; the store below finds them there only
    store = TieredStore(StoreConfig(  # a restart with a CPU tier of 4 blocks
        cpu_bytes=4 * block_bytes, cpu_page_bytes=block_bytes, promote_on_get=False, **ssd))
    try:
        ns = store.register(spec)
        on_ssd = store.tier_stats("ssd").blocks
        times: dict[str, list[float]] = {"dd": [], "ssd_get_into": []}
        for r in range(rounds + 1):
            _drop_cache(work / "ssd")
            t0 = time.perf_counter()
            n, _ = store.get_into(ns, tokens, lambda k: dst[:k])
            seconds = time.perf_counter() - t0
            assert n == ntok, f"{n} of {ntok} tokens read back"
            _drop_cache(ddfile)
            dd_seconds = dd.read(0, nblocks)
            if r:
                times["ssd_get_into"].append(seconds)
                times["dd"].append(dd_seconds)
        assert np.array_equal(dst, src)
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = _median_rows(times, nbytes, "dd")
    for row in rows:
        row["baseline"] = "dd iflag=direct" if dd.direct else "dd (page cache dropped)"
        row["blocks_on_ssd"] = on_ssd
    return rows


def main(argv=None) -> list[dict]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--block-bytes", default="2MiB")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ssd-dir", default=tempfile.gettempdir())
    parser.add_argument("--no-ssd", action="store_true")
    args = parser.parse_args(argv)
    bb = parse_size(args.block_bytes)
    load0 = os.getloadavg()[0]
    rows = memory_rows(args.blocks, bb, args.rounds)
    if not args.no_ssd:
        rows += ssd_rows(args.ssd_dir, args.blocks, bb, args.rounds)
    load = f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    print_table(rows, ["op", "gbps", "baseline", "baseline_gbps", "ratio"],
                title=f"store API: {args.blocks} x {args.block_bytes}, median of "
                      f"{args.rounds}, torch threads {torch.get_num_threads()}, {load}")
    if args.json:
        write_json(args.json, "store_api", rows, load=load)
    return rows


if __name__ == "__main__":
    main()
