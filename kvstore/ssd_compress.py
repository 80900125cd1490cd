"""lz4 for SSD records, where it pays.

Modes: ``"none"`` stores every payload raw; ``"lz4"`` compresses every
payload that gets smaller; ``"auto"`` (default) first compresses a sample
(three 32 KiB windows: start, middle, end) and compresses the whole payload
only when the sample shrinks to at most ``AUTO_RATIO`` (0.9) of its size, then
keeps the result only when the whole payload did too. The sample costs about
a tenth of a millisecond, so incompressible payloads (the common case) pay
almost nothing; payloads under 8 KiB are stored raw (4 KiB record alignment
eats any gain).

What we measured (``python -m benchmarks.ssd_lz4``, lz4.block default mode,
1-4 MiB blocks of synthetic KV shaped like Llama-style ``[L, 2, T, H, D]``;
we have no real model weights on this machine, so these are distributions,
not real activations):

=====================================================  =========  ===========
payload                                                ratio      auto stores
=====================================================  =========  ===========
fp16, random normal                                    ~1.00      raw
bf16, random normal                                    ~0.99      raw
fp16, half of the tokens zero (padding)                ~0.50      lz4
fp8 e4m3 of random normal (byte per value)             ~1.00      raw
int8 per-token-head of random normal                   ~1.00      raw
int4 packed (two values a byte)                        ~1.00      raw
fp16 with low-entropy channels (many exact zeros)      ~0.65-0.9  lz4 if <0.9
=====================================================  =========  ===========

lz4 is a byte-oriented LZ coder without entropy coding: it finds repeated
byte strings, not skewed value distributions, so dense KV (and quantized KV,
which is already dense) does not shrink; zero runs (padding, pruned heads) do.
The exact numbers of the last run are in the benchmark's table.
"""

from __future__ import annotations

import lz4.block

from kvstore.errors import InvalidArgument

MODES = ("auto", "lz4", "none")
AUTO_RATIO = 0.9
MIN_COMPRESS_BYTES = 8192
_WINDOW = 32 << 10


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
