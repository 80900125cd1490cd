"""The workload every system runs: the same bytes, the same rounds, the same checks.

A round stores ``blocks`` blocks of ``block_bytes`` under keys no earlier
round used (PUT), reads them back into the worker's destination buffer after
filling it with a sentinel (GET), compares every byte, then asks
``lookup_calls`` times whether all blocks are there (lookup; the median call
is kept). Before each round the source changes (``stamp``), so a GET that
returned an earlier round's bytes fails the check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SENTINEL = 0xA5
STAMP_STRIDE = 4096  # one stamped byte per 4 KiB: every block (and every 512 KiB row) changes
WARM_ROUND_BASE = 1_000  # round ids of the untimed warm-up: never a timed round's


@dataclass(frozen=True)
class Workload:
    """What every worker runs; sent to it as JSON (``to_dict`` / ``from_dict``)."""

    blocks: int = 64
    block_bytes: int = 2 << 20
    rounds: int = 7
    lookup_calls: int = 20
    seed: int = 1

    @property
    def nbytes(self) -> int:
        return self.blocks * self.block_bytes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Workload:
        return cls(**d)


@dataclass
class Buffers:
    """A worker's source and destination: ``nbytes`` each, allocated and touched once."""

    src: np.ndarray
    dst: np.ndarray

    @classmethod
    def of(cls, w: Workload) -> Buffers:
        rng = np.random.default_rng(w.seed)
        src = rng.integers(0, 256, w.nbytes, dtype=np.uint8)
        dst = np.full(w.nbytes, SENTINEL, dtype=np.uint8)
        return cls(src, dst)

    def stamp(self, round_id: int) -> None:
        """Make this round's source differ from every earlier round's (untimed)."""
        self.src[round_id % STAMP_STRIDE :: STAMP_STRIDE] = (round_id * 37 + 11) % 251

    def clear(self) -> None:
        """Fill the destination with the sentinel before a GET (untimed)."""
        self.dst.fill(SENTINEL)

    def check(self) -> bool:
        """Every byte the GET delivered equals the source."""
        return bool(np.array_equal(self.src, self.dst))


def blocks_of(buf: np.ndarray, block_bytes: int) -> list[np.ndarray]:
    """``buf`` as consecutive views of ``block_bytes`` (no copy)."""
    return [buf[i : i + block_bytes] for i in range(0, len(buf), block_bytes)]


@dataclass(frozen=True)
class RoundResult:
    """One system's timings for one round (seconds; ``lookup_s`` the median call).

    ``get_alloc_s``: the GET into a new object, where the system has one besides ``get``.
    """

    put_s: float
    get_s: float
    get_alloc_s: float | None
    lookup_s: float | None
    bytes_ok: bool
    lookup_ok: bool

    def to_dict(self) -> dict:
        return asdict(self)
