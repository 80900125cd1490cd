"""Small helpers shared by the eviction tests."""

from __future__ import annotations

from kvstore.eviction import EvictionPolicy


def k(name: str | int) -> bytes:
    """A readable 16-byte key."""
    return str(name).encode().ljust(16, b".")


def evict(policy: EvictionPolicy, n: int = 1, veto=()) -> list[str]:
    """Ask for ``n`` victims (``veto``: names that may not go), remove them, return their names."""
    vetoed = {k(v) for v in veto}
    out = policy.victims(n, lambda key: key not in vetoed)
    for key in out:
        policy.on_remove(key)
    return [key.rstrip(b".").decode() for key in out]


def fill(policy: EvictionPolicy, *names) -> None:
    for name in names:
        policy.on_insert(k(name))
