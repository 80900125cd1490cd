"""The contract between the tiered store and its users (clients, daemon, admin).

Everything above the store (the embedded client, the daemon's transports, the
admin API) talks to it through these protocols and dataclasses only::

    BlockStore          every backend: TieredStore, RemoteStore, ClusterBackend
      ├─ LeasingStore   + zero-copy arena leases (TieredStore; RemoteStore on shm)
      └─ AsyncLookupStore + ``alookup`` coroutines (RemoteStore)
                        a backend declares which it is in ``capabilities``
    ManagedStore        LeasingStore + the operator's controls (the daemon's store)

One signature per call: ``get_into(ns, tokens, alloc, extra)`` receives the
cached prefix into ``alloc(nbytes)`` wherever the bytes come from. Callers
read ``capabilities``; they never probe a backend with ``getattr`` or
``inspect``.

Blocks are opaque payloads of ``spec.block_bytes`` bytes each (already encoded
by the kernels' codec); block i of a request covers tokens
``[i*B, (i+1)*B)`` with ``B = spec.layout.block_tokens``. ``extra`` is the key
salt of DESIGN.md (LoRA id, multimodal hashes); it is part of the prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvstore.errors import InvalidArgument
from kvstore.namespace_spec import NamespaceSpec


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
    hits: int = 0  # blocks served by reads (get, get_into, read leases)
    misses: int = 0  # blocks asked for by reads and not served
    lookup_hits: int = 0  # blocks found by lookups
    lookup_misses: int = 0  # blocks looked up and not found


@dataclass
class StoreStats:
    tiers: list[TierStats]
    namespaces: list[NamespaceStats]


@dataclass(frozen=True)
class PrefixHint:
    """What an engine says about a cached prefix: changes the order of eviction, never correctness.

    * ``session_end``: the conversation will not continue; the prefix's private
      blocks (no other cached prefix goes through them) become the first victims.
    * ``keep_until``: protect the blocks for this many **seconds from now**
      (relative, so that it means the same in every process; the store turns
      it into a deadline on its own clock when the hint arrives). None: no deadline.
    * ``priority``: > 0 protects the blocks (until ``keep_until`` when given);
      among protected blocks that must go after all, the lowest goes first.

    A hint replaces any earlier one on the same blocks (``PrefixHint()`` clears
    them). Blocks that are not cached are ignored. The policies apply it
    (``kvstore.eviction.Hint``, ``EvictionPolicy.on_hint``).
    """

    session_end: bool = False
    keep_until: float | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.session_end, bool):
            raise InvalidArgument("session_end must be a bool")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not (
                -(1 << 63) <= self.priority < (1 << 63)):
            raise InvalidArgument("priority must be a 64-bit int")
        until = self.keep_until
        if until is not None:
            if isinstance(until, bool) or not isinstance(until, (int, float)) or not (
                    0 <= until < float("inf")):
                raise InvalidArgument("keep_until must be a finite number of seconds >= 0")
            object.__setattr__(self, "keep_until", float(until))


Alloc = Callable[[int], Any]
"""``alloc(nbytes)`` returns a writable buffer of ``nbytes`` bytes (bytearray, numpy, ...)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers beyond ``BlockStore``, declared by the backend itself.

    ``leases``: it is a ``LeasingStore`` (the caller may copy straight into and
    out of arena slots: the embedded store, and an shm carrier that maps the arena).
    ``async_lookup``: it is an ``AsyncLookupStore`` (``alookup`` and ``ahint``
    are coroutines answered by its own I/O: the remote carriers), so an asyncio
    caller awaits them instead of running ``lookup`` / ``hint`` on a worker thread.
    ``gathered_payloads``: ``put`` takes ``transport.payloads.Gathered`` blocks (a
    block sent from several buffers of the caller's tensor, never staged: the tcp
    carrier).
    """

    leases: bool = False
    async_lookup: bool = False
    gathered_payloads: bool = False


class BlockStore(Protocol):
    capabilities: Capabilities

    def register(self, spec: NamespaceSpec) -> bytes:
        """Register (idempotently) and return the namespace id (its fingerprint)."""

    def namespaces(self) -> list[NamespaceSpec]: ...

    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        """Leading tokens cached (a multiple of block_tokens), any tier."""

    def lookup_many(self, ns: bytes, tokens_list: Sequence, extras: Sequence[bytes] | None = None,
                    ) -> list[int]:
        """``lookup`` of each token array of ``tokens_list`` (with ``extras[i]``, default
        ``b""``), answered together: one round trip on a remote backend (a scheduler asks
        for all its waiting requests at once)."""

    def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        """Store block i of ``tokens`` from ``payloads[i]`` (bytes-like of block_bytes).

        ``len(payloads)`` is the number of whole blocks of ``tokens`` (or fewer:
        the leading ones). Blocks already cached are skipped. Returns the
        tokens now cached for this prefix (read-your-writes: a lookup after
        put returns sees them).
        """

    def get(self, ns: bytes, tokens, extra: bytes = b"") -> tuple[int, list]:
        """Leading cached tokens and their payloads (bytes-like); ``(0, [])`` on a miss."""

    def get_into(self, ns: bytes, tokens, alloc: Alloc, extra: bytes = b"") -> tuple[int, Any]:
        """``(tokens, buffer)``: the cached prefix's blocks back to back in ``alloc(nbytes)``.

        ``alloc`` is called once, with the bytes of the whole prefix; ``(0, None)``
        on a miss (``alloc`` is then not called).
        """

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        """Drop the blocks of this prefix and everything cached after them; returns blocks dropped."""

    def hint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int:
        """Tell the eviction policies ``hint`` about the cached prefix of ``tokens``.

        Returns the leading tokens it applied to (the cached prefix; 0 when
        nothing is cached: a no-op). Never changes what a lookup or get returns.
        """

    def flush(self) -> None:
        """Return once every block acknowledged before the call is durable on SSD."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


class AsyncLookupStore(BlockStore, Protocol):
    """A ``BlockStore`` that answers its small control calls (lookups, hints) as coroutines
    (``capabilities.async_lookup``)."""

    async def alookup(self, ns: bytes, tokens, extra: bytes = b"") -> int: ...

    async def alookup_many(self, ns: bytes, tokens_list: Sequence,
                           extras: Sequence[bytes] | None = None) -> list[int]: ...

    async def ahint(self, ns: bytes, tokens, hint: PrefixHint, extra: bytes = b"") -> int: ...


class LeasingStore(BlockStore, Protocol):
    """A ``BlockStore`` whose blocks live in an arena the caller can map (``capabilities.leases``)."""

    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        """Pin the cached prefix in the CPU arena (promoting from SSD) for zero-copy reads."""

    def lease_write(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        """Allocate arena slots for the blocks of ``tokens`` not cached yet."""

    def commit_lease(self, lease_id: int) -> int:
        """Publish a write lease's blocks; returns tokens now cached; releases it."""

    def release(self, lease_id: int) -> None:
        """End a lease (an uncommitted write lease frees its slots)."""

    def arena(self) -> ArenaInfo: ...

    def read_slot(self, slot: ArenaSlot) -> memoryview:
        """A writable view of arena memory (the slot of a lease this caller holds)."""


@dataclass
class WriteLease:
    """A write lease inside ``write_lease``; ``stored`` is set by the commit on exit."""

    lease: Lease
    stored: int = 0


@contextmanager
def write_lease(store: LeasingStore, ns: bytes, tokens, extra: bytes = b"") -> Iterator[WriteLease]:
    """Lease, copy, commit: the one way to fill arena slots.

    ``with write_lease(store, ns, tokens) as w: ...copy into w.lease.slots...``
    commits on a clean exit (``w.stored``: tokens now cached) and releases the
    slots (nothing published) when the body raises.
    """
    held = WriteLease(store.lease_write(ns, tokens, extra))
    try:
        yield held
    except BaseException:
        store.release(held.lease.lease_id)
        raise
    held.stored = store.commit_lease(held.lease.lease_id)


@contextmanager
def read_lease(store: LeasingStore, ns: bytes, tokens, extra: bytes = b"") -> Iterator[Lease]:
    """Pin the cached prefix for the body (copy out of ``lease.slots``), then release it."""
    lease = store.lease_read(ns, tokens, extra)
    try:
        yield lease
    finally:
        store.release(lease.lease_id)


@dataclass(frozen=True)
class PinInfo:
    """A pinned prefix of namespace ``namespace``."""

    namespace: bytes
    tokens: int  # tokens pinned: the cached part of the requested prefix
    bytes: int  # bytes of the blocks this pin holds


@dataclass(frozen=True)
class EvictResult:
    blocks: int  # blocks dropped
    bytes: int
    skipped: int  # blocks kept: pinned or in use


class ManagedStore(LeasingStore, Protocol):
    """The daemon's store: a ``LeasingStore`` plus the operator's controls (admin API, metrics).

    ``read_only``: writes are refused (``Drain``); ``may_block``: a read may
    touch the SSD (the daemon then runs it off the event loop).
    """

    read_only: bool
    may_block: bool
    evicts_ahead: bool  # ``make_room`` frees room ahead of writes
    pin_budget_bytes: int
    pinned_bytes: int

    def set_read_only(self, read_only: bool = True) -> None: ...

    def pin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo: ...

    def unpin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo: ...

    def pins(self) -> list[PinInfo]: ...

    def pinned_bytes_of(self, ns: bytes) -> int:
        """Bytes of namespace ``ns``'s distinct pinned blocks (pins that overlap share blocks)."""

    def evict(self, ns: bytes, tokens=None, extra: bytes = b"") -> EvictResult: ...

    def make_room(self, ns: bytes, nblocks: int) -> int:
        """Evict ahead of a write: room for ``nblocks`` blocks of ``ns`` in the arena (a
        bounded share of it); the blocks of room free now."""

    def policy_names(self) -> dict[str, str]:
        """``tier name -> policy name``."""

    def set_policy(self, tier_name: str, policy_name: str) -> str:
        """Install an online policy on a tier; returns the previous name. Offline-only ones
        (``opt``: it needs the future) are refused with ``InvalidArgument``."""

    def settings(self) -> dict:
        """The store's settings as plain values (admin ``GetConfig``)."""
