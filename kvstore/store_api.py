"""The contract between the tiered store and its users (clients, daemon, admin).

Everything above the store (the embedded client, the daemon's transports, the
admin API) talks to it through ``BlockStore`` and these dataclasses only.

Blocks are opaque payloads of ``spec.block_bytes`` bytes each (already encoded
by the kernels' codec); block i of a request covers tokens
``[i*B, (i+1)*B)`` with ``B = spec.layout.block_tokens``. ``extra`` is the key
salt of DESIGN.md (LoRA id, multimodal hashes); it is part of the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.namespace import NamespaceSpec


@dataclass(frozen=True)
class ArenaSlot:
    """Where one block lives in the shared CPU arena: ``length`` bytes at ``offset``."""

    offset: int
    length: int


@dataclass(frozen=True)
class ArenaInfo:
    """How a colocated client maps the CPU arena (shm carrier)."""

    path: str  # a file under /dev/shm (or /proc/<pid>/fd/<n> for a memfd)
    size: int


@dataclass
class Lease:
    """Pinned arena slots of a prefix: readable (get) or writable (put) until released.

    A read lease covers the leading ``num_tokens`` cached tokens; blocks under
    it are never evicted nor overwritten. A write lease holds freshly
    allocated slots for the blocks that were missing (``first_block`` is the
    index of the first such block in the request); they become visible to
    lookups only on ``commit_lease``.
    """

    lease_id: int
    namespace: bytes
    num_tokens: int
    slots: list[ArenaSlot] = field(default_factory=list)
    first_block: int = 0
    writable: bool = False


@dataclass
class TierStats:
    name: str
    capacity_bytes: int
    used_bytes: int
    blocks: int
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    demotions: int = 0
    promotions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    degraded: bool = False


@dataclass
class NamespaceStats:
    fingerprint: str
    spec: NamespaceSpec
    blocks: int
    bytes: int
    hits: int = 0
    misses: int = 0


@dataclass
class StoreStats:
    tiers: list[TierStats]
    namespaces: list[NamespaceStats]


class BlockStore(Protocol):
    def register(self, spec: NamespaceSpec) -> bytes:
        """Register (idempotently) and return the namespace id (its fingerprint)."""

    def namespaces(self) -> list[NamespaceSpec]: ...

    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        """Leading tokens cached (a multiple of block_tokens), any tier."""

    def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        """Store block i of ``tokens`` from ``payloads[i]`` (bytes-like of block_bytes).

        ``len(payloads)`` is the number of whole blocks of ``tokens`` (or fewer:
        the leading ones). Blocks already cached are skipped. Returns the
        tokens now cached for this prefix (read-your-writes: a lookup after
        put returns sees them).
        """

    def get(self, ns: bytes, tokens, extra: bytes = b"") -> tuple[int, list[bytes]]:
        """Leading cached tokens and a copy of their payloads; ``(0, [])`` on a miss."""

    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        """Pin the cached prefix in the CPU arena (promoting from SSD) for zero-copy reads."""

    def lease_write(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        """Allocate arena slots for the blocks of ``tokens`` not cached yet."""

    def commit_lease(self, lease_id: int) -> int:
        """Publish a write lease's blocks; returns tokens now cached; releases it."""

    def release(self, lease_id: int) -> None:
        """End a lease (an uncommitted write lease frees its slots)."""

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        """Drop the blocks of this prefix and everything cached after them; returns blocks dropped."""

    def flush(self) -> None:
        """Return once every block acknowledged before the call is durable on SSD."""

    def stats(self) -> StoreStats: ...

    def arena(self) -> ArenaInfo: ...

    def read_slot(self, slot: ArenaSlot) -> memoryview:
        """A view of arena memory (for carriers that send from the arena)."""

    def close(self) -> None: ...
