"""Deterministic SSD records for the SSD tier's tests and its crash-test child.

Record ``i`` always has the same header and payload, so a checker can tell an
intact record from a corrupt one without remembering what was written.
Run as a script it is the crash test's child (see ``child_main``).
"""

from __future__ import annotations

import sys

import numpy as np
import xxhash

from kvstore.keys import ROOT_KEY
from kvstore.ssd.record import SSDRecordHeader

NAMESPACES = (bytes.fromhex("11" * 16), bytes.fromhex("22" * 16))
CHAIN = 4  # records 4j .. 4j+3 form one prompt: each the parent of the next
BLOCK_TOKENS = 16


def key_of(i: int) -> bytes:
    return xxhash.xxh3_128_digest(i.to_bytes(8, "little"), seed=7)


def namespace_of(i: int) -> bytes:
    return NAMESPACES[(i // CHAIN) % 2]


def payload_of(i: int, max_bytes: int = 24 << 10) -> bytes:
    rng = np.random.default_rng(i)
    n = int(rng.integers(1, max_bytes))
    kind = i % 3
    if kind == 0:  # dense: incompressible
        return rng.bytes(n)
    if kind == 1:  # padded: compressible
        data = np.zeros(n, np.uint8)
        data[: n // 4] = rng.integers(0, 256, n // 4, dtype=np.uint8)
        return data.tobytes()
    return bytes([i % 251]) * n  # constant


def header_of(i: int, payload_len: int) -> SSDRecordHeader:
    parent = ROOT_KEY if i % CHAIN == 0 else key_of(i - 1)
    tokens = np.random.default_rng(i + 1_000_000).integers(
        0, 50_000, BLOCK_TOKENS, dtype=np.uint32)
    return SSDRecordHeader(
        namespace=namespace_of(i), key=key_of(i), parent=parent, tokens=tokens,
        extra=b"salt" if i % 5 == 0 else b"", codec="none", payload_len=payload_len,
    )


def record(i: int, max_bytes: int = 24 << 10) -> tuple[SSDRecordHeader, bytes]:
    payload = payload_of(i, max_bytes)
    return header_of(i, len(payload)), payload


def index_of_key(limit: int) -> dict[bytes, int]:
    return {key_of(i): i for i in range(limit)}


def child_main(argv: list[str]) -> None:
    """``ssd_workload.py DIR START COUNT SEED [direct]``: write records START..START+COUNT-1.

    Prints ``F <n>`` after a flush that covers records ``START .. n-1``,
    ``r <i>`` before it removes record ``i`` and ``R <i>`` after (a remove is
    durable once a later ``F`` line follows it). The parent kills it with
    SIGKILL.
    """
    import random

    from kvstore.ssd.tier import SSDTier

    directory, start, count, seed = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    rnd = random.Random(seed)
    direct = len(argv) > 4 and argv[4] == "direct"
    tier = SSDTier(directory, capacity_bytes=1 << 30, segment_bytes=256 << 10,
                   direct_io=True if direct else False)
    tier.recover()
    out = sys.stdout
    out.write("S\n")
    out.flush()
    for i in range(start, start + count):
        header, payload = record(i)
        tier.write(header, payload)
        if i > start and rnd.random() < 0.1:
            victim = rnd.randrange(start, i)
            out.write(f"r {victim}\n")  # may be removed from here on
            out.flush()
            tier.remove(namespace_of(victim), key_of(victim))
            out.write(f"R {victim}\n")
            out.flush()
        if rnd.random() < 0.2:
            tier.flush()
            out.write(f"F {i + 1}\n")
            out.flush()
    tier.close()
    out.write("D\n")
    out.flush()


if __name__ == "__main__":
    child_main(sys.argv[1:])
