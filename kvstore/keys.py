"""Chained block keys: the name of a block that every process on every node agrees on.

    key[0] = xxh3_128(ROOT_KEY || tokens[0:B]  || extra, seed=KEY_SEED)
    key[i] = xxh3_128(key[i-1] || tokens[iB:(i+1)B] || extra, seed=KEY_SEED)

Tokens are hashed as little-endian uint32. The seed is a constant: a random
per-process seed (Python's ``hash``) is the classic way to get keys that never
match across processes. ``extra`` carries what else changes a block's KV: LoRA
id, multimodal hashes, a tenant's cache salt.
"""

from __future__ import annotations

import numpy as np
import xxhash

from kvstore.tokens import as_tokens

KEY_SEED = 0x6B76_7374_6F72_6521  # "kvstore!"
KEY_BYTES = 16
ROOT_KEY = bytes(KEY_BYTES)


def block_key(parent: bytes, block_tokens: np.ndarray, extra: bytes = b"") -> bytes:
    """Key of one block given its parent's key and its tokens."""
    h = xxhash.xxh3_128(seed=KEY_SEED)
    h.update(parent)
    h.update(as_tokens(block_tokens).tobytes())
    h.update(extra)
    return h.digest()


def block_keys(
    tokens, block_tokens: int, extra: bytes = b"", parent: bytes = ROOT_KEY
) -> list[bytes]:
    """Chained keys of every whole block of ``tokens`` (the partial tail is skipped)."""
    arr = as_tokens(tokens)
    n = len(arr) // block_tokens
    raw = arr[: n * block_tokens].tobytes()
    step = block_tokens * arr.itemsize
    keys = []
    for i in range(n):
        h = xxhash.xxh3_128(seed=KEY_SEED)
        h.update(parent)
        h.update(raw[i * step : (i + 1) * step])
        h.update(extra)
        parent = h.digest()
        keys.append(parent)
    return keys
