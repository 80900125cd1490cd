"""Admin controls of the TieredStore (mixin): drain, pins, eviction by namespace, policies.

What the admin API needs from the store, kept apart from the data path:

* ``set_draining(True)``: writes (``put``, ``lease_write``) raise ``Draining``;
  reads, lookups, deletes and flushes keep working.
* ``pin`` / ``unpin``: keep a cached prefix resident in the CPU tier (a read
  lease held by the store: locked blocks are never evicted, demoted nor
  overwritten). The bytes of the distinct pinned blocks stay within
  ``pin_budget_bytes`` (default: a quarter of the CPU tier); a pin beyond it
  raises ``CapacityError`` and pins nothing.
* ``evict``: drop a namespace's blocks, or those under a prefix, from every
  tier (SSD copies included); pinned and in-use blocks are skipped.
* ``set_policy``: replace a memory tier's eviction policy at run time; the
  resident blocks move to the new policy, oldest access first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from kvstore.errors import CapacityError, Draining, InvalidArgument, KVStoreError, NotFound
from kvstore.keys import block_keys
from kvstore.store.block_state import CompositeTreeView, subtree_keys
from kvstore.tokens import as_tokens


@dataclass(frozen=True)
class PinInfo:
    namespace: bytes
    tokens: int  # tokens pinned: the cached part of the requested prefix
    bytes: int  # bytes of the blocks this pin holds


@dataclass(frozen=True)
class EvictResult:
    blocks: int  # blocks dropped
    bytes: int
    skipped: int  # blocks kept: pinned or in use


@dataclass
class _Pin:
    info: PinInfo
    lease_id: int
    keys: list[bytes]  # policy keys of the pinned blocks


def available_policies() -> list[str]:
    """Names the eviction registry knows (``["lru"]`` without a registry)."""
    try:
        from kvstore.eviction.registry import available_policies as names
    except ImportError:
        return ["lru"]
    return sorted(names())


class StoreControl:
    """Mixin of ``TieredStore``; everything runs under the store lock except leasing."""

    pin_budget_bytes: int | None = None  # None: a quarter of the CPU tier
    _draining = False
    _pins: dict | None = None
    _pin_refs: Counter | None = None
    _pinned_bytes = 0

    # -- drain ----------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self._draining

    def set_draining(self, draining: bool = True) -> None:
        """Refuse (``True``) or accept again (``False``) new writes."""
        self._draining = bool(draining)

    def _lease_write(self, ns, arr, extra, tier):
        if self._draining:
            raise Draining("the store is draining: writes are refused, reads keep working")
        return super()._lease_write(ns, arr, extra, tier)

    # -- pins -----------------------------------------------------------------
    @property
    def pin_budget(self) -> int:
        if self.pin_budget_bytes is not None:
            return self.pin_budget_bytes
        return self.cpu.capacity_bytes // 4

    @property
    def pinned_bytes(self) -> int:
        return self._pinned_bytes

    def _pin_table(self) -> dict:
        if self._pins is None:
            self._pins, self._pin_refs = {}, Counter()
        return self._pins

    def _pin_key(self, ns: bytes, tokens, extra: bytes):
        arr = as_tokens(tokens)
        with self._lock:
            bt = self._nst(ns).spec.block_tokens
        if len(arr) < bt:
            raise InvalidArgument(f"a prefix needs at least one whole block ({bt} tokens)")
        arr = arr[: len(arr) // bt * bt]
        return arr, (bytes(ns), arr.tobytes(), bytes(extra))

    def pin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo:
        """Keep the cached part of this prefix resident (idempotent per prefix)."""
        arr, key = self._pin_key(ns, tokens, extra)
        with self._lock:
            pin = self._pin_table().get(key)
            if pin is not None:
                return pin.info
        lease = self.lease_read(ns, arr, extra)  # promotes SSD blocks, locks the path
        try:
            with self._lock:
                nst = self._nst(ns)
                if lease.num_tokens == 0:
                    raise NotFound("prefix not cached: nothing to pin")
                if key in self._pin_table():  # a concurrent pin of the same prefix won
                    raise _AlreadyPinned(self._pins[key].info)
                bt, bb = nst.spec.block_tokens, nst.spec.block_bytes
                keys = [ns + k for k in block_keys(arr[: lease.num_tokens], bt, extra)]
                fresh = {k for k in keys if self._pin_refs[k] == 0}
                if self._pinned_bytes + len(fresh) * bb > self.pin_budget:
                    raise CapacityError(
                        f"pinning {len(fresh) * bb} more bytes exceeds the pin budget "
                        f"({self._pinned_bytes} of {self.pin_budget} bytes pinned)"
                    )
                self._pin_refs.update(keys)
                self._pinned_bytes += len(fresh) * bb
                info = PinInfo(bytes(ns), lease.num_tokens, len(keys) * bb)
                self._pins[key] = _Pin(info, lease.lease_id, keys)
                return info
        except _AlreadyPinned as won:
            self.release(lease.lease_id)
            return won.info
        except BaseException:
            self.release(lease.lease_id)
            raise

    def unpin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo:
        """Release the pin made with the same prefix; ``NotFound`` when there is none."""
        _, key = self._pin_key(ns, tokens, extra)
        with self._lock:
            pin = self._pin_table().pop(key, None)
            if pin is None:
                raise NotFound("no pin on this prefix")
            bb = self._nst(ns).spec.block_bytes
            self._pin_refs.subtract(pin.keys)
            for k in set(pin.keys):
                if self._pin_refs[k] <= 0:
                    del self._pin_refs[k]
                    self._pinned_bytes -= bb
            self.release(pin.lease_id)
            return pin.info

    def pins(self) -> list[PinInfo]:
        with self._lock:
            return [p.info for p in self._pin_table().values()]

    def pinned_bytes_of(self, ns: bytes) -> int:
        """Bytes of the distinct pinned blocks of one namespace."""
        with self._lock:
            refs = self._pin_refs or Counter()
            nst = self._ns.get(ns)
            if nst is None:
                return 0
            return sum(1 for k in refs if k[:16] == ns) * nst.spec.block_bytes

    # -- eviction by namespace / prefix -----------------------------------------
    def evict(self, ns: bytes, tokens=None, extra: bytes = b"") -> EvictResult:
        """Drop every block of ``ns`` (no tokens) or every sequence starting with the prefix."""
        with self._lock:
            self._check_open()
            nst = self._nst(ns)
            if tokens is None or len(tokens) == 0:
                starts = [m.key for m in nst.tree.blocks() if nst.tree.depth(m.key) == 1]
            else:
                arr = as_tokens(tokens)
                if len(arr) < nst.spec.block_tokens:
                    raise InvalidArgument(
                        f"a prefix needs at least one whole block ({nst.spec.block_tokens} tokens)"
                    )
                m = nst.tree.match(arr, extra)
                whole = len(arr) // nst.spec.block_tokens
                starts = [m.blocks[-1].key] if len(m.blocks) == whole else []
            total = sum(len(subtree_keys(nst.tree, k)) for k in starts)
            dropped = sum(self._remove_subtree(nst, k) for k in starts)
            return EvictResult(dropped, dropped * nst.spec.block_bytes, total - dropped)

    # -- policies -------------------------------------------------------------
    def policy_names(self) -> dict[str, str]:
        """Tier name -> the name of its eviction policy (memory tiers)."""
        with self._lock:
            return {t.name: t.policy.name for t in self._tiers}

    def set_policy(self, tier_name: str, policy_name: str) -> str:
        """Give tier ``tier_name`` a fresh ``policy_name`` policy; returns the previous name."""
        with self._lock:
            self._check_open()
            tier = next((t for t in self._tiers if t.name == tier_name), None)
            if tier is None:
                names = [t.name for t in self._tiers]
                raise InvalidArgument(f"no {tier_name!r} tier with a policy (tiers: {names})")
            try:
                policy = self.config.make_policy(policy_name)
            except KVStoreError:
                raise
            except (KeyError, ValueError, TypeError) as exc:
                raise InvalidArgument(f"unknown eviction policy {policy_name!r}: {exc}") from None
            policy.bind(CompositeTreeView(self._ns))
            resident = []
            for fp, nst in self._ns.items():
                for meta in nst.tree.blocks():
                    if meta.handle.tier is tier:
                        resident.append((max(meta.last_access, meta.inserted_at), fp + meta.key))
            for _, pk in sorted(resident, key=lambda r: r[0]):
                policy.on_insert(pk)
            previous, tier.policy = tier.policy.name, policy
            setattr(self.config, f"{tier.name}_policy", policy_name)
            return previous


class _AlreadyPinned(Exception):
    def __init__(self, info: PinInfo):
        self.info = info
