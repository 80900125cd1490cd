"""NamespaceTable: the store's namespaces, each with its radix tree and counters.

``register`` is idempotent per spec and refuses a fingerprint clash (same id,
different spec) and a block size a memory tier cannot hold. ``by_fp`` is the
mapping the tier set and the policies' tree views read (shared, not copied).
Not thread-safe on its own: the store calls it under its lock.
"""

from __future__ import annotations

from kvstore.errors import CapacityError, LayoutMismatch, NotFound
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store.block_state import NamespaceState
from kvstore.store.memory_tier import MemoryTier
from kvstore.store_api import NamespaceStats


class NamespaceTable:
    def __init__(self) -> None:
        self.by_fp: dict[bytes, NamespaceState] = {}

    def register(self, spec: NamespaceSpec, tiers: list[MemoryTier]) -> bool:
        """Add ``spec``'s namespace; False when it was there already."""
        nst = self.by_fp.get(spec.fingerprint)
        if nst is not None:
            if nst.spec != spec:
                raise LayoutMismatch("namespace fingerprint clash with a different spec")
            return False
        for tier in tiers:
            if not tier.fits(spec.block_bytes):
                raise CapacityError(f"a {spec.block_bytes}-byte block cannot fit the {tier.name} tier")
        self.by_fp[spec.fingerprint] = NamespaceState.create(spec)
        return True

    def get(self, ns: bytes) -> NamespaceState:
        nst = self.by_fp.get(ns)
        if nst is None:
            raise NotFound(f"unknown namespace {bytes(ns).hex()}")
        return nst

    def find(self, ns: bytes) -> NamespaceState | None:
        return self.by_fp.get(ns)

    def tenant_of(self, ns: bytes) -> str | None:
        """The tenant owning namespace ``ns`` (None: unknown); safe without the lock (one read)."""
        nst = self.by_fp.get(ns)
        return nst.spec.tenant if nst is not None else None

    def specs(self) -> list[NamespaceSpec]:
        return [n.spec for n in self.by_fp.values()]

    def manifest(self) -> dict[bytes, dict]:
        """What the SSD tier's manifest records: fingerprint -> spec dict."""
        return {fp: n.spec.to_dict() for fp, n in self.by_fp.items()}

    def stats(self) -> list[NamespaceStats]:
        return [
            NamespaceStats(fingerprint=fp.hex(), spec=n.spec, blocks=len(n.tree),
                           bytes=len(n.tree) * n.spec.block_bytes, hits=n.hits, misses=n.misses,
                           lookup_hits=n.lookup_hits, lookup_misses=n.lookup_misses)
            for fp, n in self.by_fp.items()
        ]
