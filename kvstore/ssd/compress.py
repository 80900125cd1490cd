"""lz4 for SSD records, where it pays.

Modes: ``"none"`` stores every payload raw; ``"lz4"`` compresses every
payload that gets smaller; ``"auto"`` (default) first compresses a sample
(three 16 KiB windows: start, middle, end) and compresses the whole payload
only when the sample shrinks to at most ``AUTO_RATIO`` (0.75) of its size,
then keeps the result only when the whole payload did too. On incompressible
bytes lz4 gives up fast, so the sample costs some 20-40 us a record; payloads
under 8 KiB are stored raw (the 4 KiB record alignment eats any gain).

What we measured (``python -m benchmarks.ssd_lz4``; lz4.block default mode;
one store block ``[L=4, 2, T=256, H=8, D=128]``; no model weights exist on
this machine, so the values are synthetic: normal, with log-normal
per-channel scales as real K/V have outlier channels; speeds on a 2-core VM
shared with other jobs, best of 3, so only their order of magnitude holds):

======================================  ==========  ===========  ================
payload                                 lz4 ratio   auto stores  lz4 compress
======================================  ==========  ===========  ================
fp16 (or bf16), dense                   1.00        raw          (gives up fast)
fp8 e4m3, per token-head scale          1.00        raw          (gives up fast)
int8, per token-head                    1.00        raw          (gives up fast)
int4, two values a byte                 0.84        raw          ~0.06-0.3 GB/s
fp16, values rounded to 1/8             0.79        raw          ~0.09 GB/s
fp16, values with |x| < 0.5 set to 0    0.86        raw          ~0.07-0.15 GB/s
fp16, last half of the tokens zero      0.50        lz4          ~2-3 GB/s
all zeros                               0.004       lz4          ~4.5 GB/s
======================================  ==========  ===========  ================

So lz4 pays on zero runs (padding, empty blocks), not on dense KV: it finds
repeated byte strings and has no entropy coder, and the low mantissa bytes
of real-valued KV never repeat; quantized codecs are already dense. Where a
payload only shrinks to 0.8-0.9, lz4 runs at 0.06-0.3 GB/s, several times
slower than the disk it would spare, for 10-20% of space: hence 0.75, not
0.9, as the bar.
"""

from __future__ import annotations

import lz4.block

from kvstore.errors import InvalidArgument

MODES = ("auto", "lz4", "none")
AUTO_RATIO = 0.75
MIN_COMPRESS_BYTES = 8192
_WINDOW = 16 << 10


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidArgument(f"compression must be one of {MODES}, got {mode!r}")
    return mode


def _sample_ratio(mv: memoryview) -> float:
    n = len(mv)
    if n <= 3 * _WINDOW:
        sample = mv
    else:
        mid = (n // 2) - _WINDOW // 2
        sample = b"".join((mv[:_WINDOW], mv[mid : mid + _WINDOW], mv[n - _WINDOW :]))
    return len(lz4.block.compress(sample, store_size=False)) / max(1, len(sample))


def compress(payload, mode: str):
    """``(compressed?, bytes to store)`` for ``payload`` under ``mode``."""
    mv = memoryview(payload).cast("B")
    if mode == "none" or len(mv) < MIN_COMPRESS_BYTES:
        return False, mv
    if mode == "auto" and _sample_ratio(mv) > AUTO_RATIO:
        return False, mv
    packed = lz4.block.compress(mv, store_size=False)
    limit = AUTO_RATIO * len(mv) if mode == "auto" else len(mv) - 1
    if len(packed) > limit:
        return False, mv
    return True, packed


def decompress(stored, raw_len: int) -> bytes:
    return lz4.block.decompress(stored, uncompressed_size=raw_len)
