"""SSD tier write/read GB/s against ``dd`` with O_DIRECT on the same filesystem.

    python -m benchmarks.store_ssd [--dir DIR] [--total-mib 1024] [--block-mib 1 4 16] [--json PATH]

``ssd_rows(directory, block_bytes, total_bytes)`` (used by ``benchmarks.store``)
measures, in a fresh sub-folder of ``directory``:

- write: ``SSDTier.write_many`` (batches of 32) of ``total_bytes / block_bytes``
  incompressible blocks from page-aligned memory, as the store writes CPU arena slots
  (``compression="auto"`` pays its sampling and stores raw), followed
  by ``flush()`` (fsync of the segments and the directory), all in the timed
  span; baseline ``dd if=/dev/zero of=F bs=BLOCK count=N oflag=direct
  conv=fsync``.
- read: ``SSDTier.read_many_into`` of the blocks, in batches of up to 32
  (64 MiB), into page-aligned buffers (as the store promotes a prefix into
  CPU arena slots), checksums verified; the row also carries
  ``one_at_a_time_gbps`` (``read_into`` block after block). Baseline ``dd if=F
  of=/dev/null bs=BLOCK iflag=direct``. Before our read the segment files'
  pages are dropped from the page cache (``posix_fadvise(DONTNEED)`` after the
  flush; the pages are clean then, so the kernel drops them), so the read
  comes from the device, as dd's O_DIRECT read does.

Each measurement runs ``repeat`` times, ours and dd's alternating, and the best
of each is kept (the disk is shared, its speed wanders). dd's own reported
time is used (its start-up is not counted). If the filesystem refuses O_DIRECT
(tmpfs, some overlay filesystems), dd runs with ``conv=fsync`` for writes and
a plain read after ``DONTNEED`` for reads, and the row's ``baseline`` says so.
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import base_parser, gbps, print_table, write_json
from kvstore.keys import ROOT_KEY
from kvstore.ssd_record import SSDRecordHeader
from kvstore.ssd_tier import SSDTier

_DD_TIME = re.compile(r"copied, ([0-9.]+) s")


def _dd(args: list[str]) -> tuple[bool, float]:
    """Run dd; (succeeded, seconds as dd reports them or wall time)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["dd", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return False, wall
    m = _DD_TIME.search(proc.stderr)
    return True, float(m.group(1)) if m else wall


def _drop_cache(path: Path) -> None:
    for p in [path] if path.is_file() else list(path.iterdir()):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _arena_blocks(n: int, block_bytes: int) -> list[np.ndarray]:
    """``n`` page-aligned blocks in an anonymous mapping, as CPU arena slots are."""
    mm = mmap.mmap(-1, n * block_bytes)
    arr = np.frombuffer(mm, dtype=np.uint8)
    return [arr[i * block_bytes : (i + 1) * block_bytes] for i in range(n)]


def _headers(n: int, block_bytes: int) -> list[SSDRecordHeader]:
    ns = bytes(range(16))
    out = []
    parent = ROOT_KEY
    for i in range(n):
        key = (i + 1).to_bytes(16, "little")
        tokens = np.arange(i * 256, (i + 1) * 256, dtype=np.uint32)
        out.append(SSDRecordHeader(ns, key, parent, tokens, b"", "none", block_bytes))
        parent = key
    return out


def _tier_write(folder: Path, headers, payloads, capacity: int) -> tuple[float, list]:
    if folder.exists():
        shutil.rmtree(folder)
    tier = SSDTier(folder, capacity_bytes=capacity)
    tier.recover()
    t0 = time.perf_counter()
    locs = []
    step = 32
    for i in range(0, len(headers), step):
        batch = [(h, payloads[(i + j) % len(payloads)]) for j, h in enumerate(headers[i : i + step])]
        for loc in tier.write_many(batch):
            if isinstance(loc, Exception):
                raise loc
            locs.append(loc)
    tier.flush()
    seconds = time.perf_counter() - t0
    tier.close()
    return seconds, locs


def _tier_read(folder: Path, locs, block_bytes: int, batched: bool) -> float:
    tier = SSDTier(folder, capacity_bytes=1 << 62)
    tier.recover(verify=False)
    _drop_cache(folder)
    batch = max(1, min(len(locs), (64 << 20) // block_bytes, 32)) if batched else 1
    slots = _arena_blocks(batch, block_bytes)
    t0 = time.perf_counter()
    for i in range(0, len(locs), batch):
        chunk = locs[i : i + batch]
        if batched:
            errors = tier.read_many_into(chunk, slots[: len(chunk)])
            if any(errors):
                raise next(e for e in errors if e)
        else:
            tier.read_into(chunk[0], slots[0])
    seconds = time.perf_counter() - t0
    tier.close()
    return seconds


def ssd_rows(directory, block_bytes: int, total_bytes: int, repeat: int = 2) -> list[dict]:
    """Rows for the SSD tier's write and read against dd in ``directory``."""
    n = max(1, total_bytes // block_bytes)
    nbytes = n * block_bytes
    work = Path(tempfile.mkdtemp(prefix="kvstore-ssd-bench-", dir=directory))
    try:
        payloads = _arena_blocks(4, block_bytes)
        for p in payloads:
            p[:] = np.random.default_rng(len(p)).integers(0, 256, block_bytes, dtype=np.uint8)
        headers = _headers(n, block_bytes)
        capacity = 2 * nbytes + (512 << 20)
        folder, ddfile = work / "tier", work / "dd.bin"
        count = [f"bs={block_bytes}", f"count={n}"]

        direct = True
        ours_w = dd_w = ours_r = ours_r1 = dd_r = float("inf")
        for _ in range(repeat):
            seconds, locs = _tier_write(folder, headers, payloads, capacity)
            ours_w = min(ours_w, seconds)
            if direct:
                ok, seconds = _dd(["if=/dev/zero", f"of={ddfile}", *count,
                                   "oflag=direct", "conv=fsync"])
                direct = ok
            if not direct:
                ok, seconds = _dd(["if=/dev/zero", f"of={ddfile}", *count, "conv=fsync"])
                if not ok:
                    raise RuntimeError("dd failed")
            dd_w = min(dd_w, seconds)
            ours_r = min(ours_r, _tier_read(folder, locs, block_bytes, batched=True))
            ours_r1 = min(ours_r1, _tier_read(folder, locs, block_bytes, batched=False))
            if direct:
                ok, seconds = _dd([f"if={ddfile}", "of=/dev/null", *count, "iflag=direct"])
            else:
                _drop_cache(ddfile)
                ok, seconds = _dd([f"if={ddfile}", "of=/dev/null", *count])
            dd_r = min(dd_r, seconds)
        note = "" if direct else "O_DIRECT refused by the filesystem: dd conv=fsync / cold read"
        rows = []
        for op, ours, base in (("write", ours_w, dd_w), ("read", ours_r, dd_r)):
            row = {
                "name": "ssd", "op": op, "block_bytes": block_bytes, "bytes": nbytes,
                "gbps": gbps(nbytes, ours), "baseline": "dd" if direct else "dd (no O_DIRECT)",
                "baseline_gbps": gbps(nbytes, base), "ratio": base / ours,
            }
            if op == "read":
                row["one_at_a_time_gbps"] = gbps(nbytes, ours_r1)
            if note:
                row["note"] = note
            rows.append(row)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="folder on the filesystem to measure (default: the temp folder)")
    parser.add_argument("--total-mib", type=int, default=1024, help="bytes written per run")
    parser.add_argument("--block-mib", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    for mib in args.block_mib:
        rows += ssd_rows(args.dir, int(mib * (1 << 20)), args.total_mib << 20, args.repeat)
    print_table(rows, ["name", "op", "block_bytes", "gbps", "baseline", "baseline_gbps", "ratio",
                       "one_at_a_time_gbps"],
                title=f"SSD tier vs dd, {args.total_mib} MiB per run, in {args.dir}")
    if args.json:
        write_json(args.json, "store_ssd", rows)


if __name__ == "__main__":
    main()
