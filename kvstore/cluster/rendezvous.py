"""Rendezvous (highest-random-weight) hashing: which nodes own a key, best first.

Every node gets the score ``xxh3_64(node_id || key)`` for a key; the key's
owner is the node with the highest score, its replicas the next ones. Every
client and node computes the same order from the same member list, with no
coordination. When a node leaves, only its keys move (each to the node that
was second for it); when one joins, it takes only the keys it now wins
(about 1/N of them). The tests check both, and the balance.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

SEED = 0x6B76_7374_6F72_6552  # fixed: every process must rank alike


def score(node_id: str, key: bytes) -> int:
    return xxhash.xxh3_64_intdigest(node_id.encode() + b"\x00" + key, seed=SEED)


def rank(key: bytes, node_ids: Iterable[str]) -> list[str]:
    """``node_ids`` ordered by their score for ``key``, highest first (ties: by id)."""
    return sorted(node_ids, key=lambda n: (score(n, key), n), reverse=True)


def owner(key: bytes, node_ids: Iterable[str]) -> str | None:
    best, best_score = None, -1
    for n in node_ids:
        s = score(n, key)
        if s > best_score or (s == best_score and best is not None and n > best):
            best, best_score = n, s
    return best
