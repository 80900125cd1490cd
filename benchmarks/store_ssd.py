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

Ours and dd alternate every 64 MiB (up to 32 blocks; dd with ``seek``/``skip``
and ``conv=notrunc``, its last chunk with ``fsync``), so both see the same
moments of a shared disk whose speed wanders; each sum is the best of
``repeat`` rounds. dd's own reported time is used (its start-up is not
counted). If the filesystem refuses O_DIRECT
(tmpfs, some overlay filesystems), dd runs with ``conv=fsync`` for writes and
a plain read after ``DONTNEED`` for reads, and the row's ``baseline`` says so.
"""

from __future__ import annotations

import contextlib
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
from kvstore.ssd.record import SSDRecordHeader
from kvstore.ssd.tier import SSDTier

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


class _DD:
    """dd on one file, chunk by chunk, with O_DIRECT unless the filesystem refuses it."""

    def __init__(self, path: Path, block_bytes: int) -> None:
        self.path = path
        self.bs = f"bs={block_bytes}"
        self.direct = True

    def write(self, first: int, count: int, last: bool) -> float:
        args = ["if=/dev/zero", f"of={self.path}", self.bs, f"count={count}", f"seek={first}"]
        conv = "conv=notrunc,fsync" if last else "conv=notrunc"
        if self.direct:
            ok, seconds = _dd([*args, "oflag=direct", conv])
            if ok:
                return seconds
            self.direct = False
        ok, seconds = _dd([*args, "conv=notrunc,fsync"])
        if not ok:
            raise RuntimeError("dd failed")
        return seconds

    def read(self, first: int, count: int) -> float:
        args = [f"if={self.path}", "of=/dev/null", self.bs, f"count={count}", f"skip={first}"]
        if self.direct:
            ok, seconds = _dd([*args, "iflag=direct"])
        else:
            _drop_cache(self.path)
            ok, seconds = _dd(args)
        if not ok:
            raise RuntimeError("dd failed")
        return seconds


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _check(results) -> list:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def _one_round(work: Path, headers, payloads, block_bytes: int, chunk: int, capacity: int):
    """One write pass and one read pass of ours and dd's, alternating every ``chunk`` blocks.

    Returns seconds: (ours write, dd write, ours read, ours read one at a time, dd read).
    """
    folder, n = work / "tier", len(headers)
    shutil.rmtree(folder, ignore_errors=True)
    dd = _DD(work / "dd.bin", block_bytes)
    with contextlib.suppress(FileNotFoundError):
        (work / "dd.bin").unlink()
    tier = SSDTier(folder, capacity_bytes=capacity)
    tier.recover()
    ours_w = dd_w = 0.0
    locs: list = []
    for i in range(0, n, chunk):
        items = [(h, payloads[(i + j) % len(payloads)]) for j, h in enumerate(headers[i : i + chunk])]
        ours_w += _timed(lambda items=items: locs.extend(_check(tier.write_many(items))))
        if i + chunk >= n:
            ours_w += _timed(tier.flush)
        dd_w += dd.write(i, len(items), last=i + chunk >= n)
    tier.close()

    tier = SSDTier(folder, capacity_bytes=1 << 62)
    tier.recover(verify=False)
    _drop_cache(folder)
    slots = _arena_blocks(chunk, block_bytes)
    ours_r = ours_r1 = dd_r = 0.0
    for i in range(0, n, chunk):
        part = locs[i : i + chunk]
        ours_r += _timed(lambda part=part: _check(tier.read_many_into(part, slots[: len(part)])))
        dd_r += dd.read(i, len(part))
    _drop_cache(folder)
    for loc in locs:
        ours_r1 += _timed(lambda loc=loc: tier.read_into(loc, slots[0]))
    tier.close()
    return ours_w, dd_w, ours_r, ours_r1, dd_r, dd.direct


def ssd_rows(directory, block_bytes: int, total_bytes: int, repeat: int = 3) -> list[dict]:
    """Rows for the SSD tier's write and read against dd in ``directory``."""
    n = max(1, total_bytes // block_bytes)
    nbytes = n * block_bytes
    chunk = max(1, min(32, (64 << 20) // block_bytes))
    work = Path(tempfile.mkdtemp(prefix="kvstore-ssd-bench-", dir=directory))
    try:
        payloads = _arena_blocks(4, block_bytes)
        for p in payloads:
            p[:] = np.random.default_rng(len(p)).integers(0, 256, block_bytes, dtype=np.uint8)
        headers = _headers(n, block_bytes)
        capacity = 2 * nbytes + (512 << 20)
        best = [float("inf")] * 5
        direct = True
        for _ in range(repeat):
            *times, direct = _one_round(work, headers, payloads, block_bytes, chunk, capacity)
            best = [min(b, t) for b, t in zip(best, times)]
        ours_w, dd_w, ours_r, ours_r1, dd_r = best
        rows = []
        for op, ours, base in (("write", ours_w, dd_w), ("read", ours_r, dd_r)):
            row = {
                "name": "ssd", "op": op, "block_bytes": block_bytes, "bytes": nbytes,
                "gbps": gbps(nbytes, ours), "baseline": "dd" if direct else "dd (no O_DIRECT)",
                "baseline_gbps": gbps(nbytes, base), "ratio": base / ours,
            }
            if op == "read":
                row["one_at_a_time_gbps"] = gbps(nbytes, ours_r1)
            if not direct:
                row["note"] = "O_DIRECT refused by the filesystem: dd conv=fsync / cold read"
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
    parser.add_argument("--repeat", type=int, default=3)
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
