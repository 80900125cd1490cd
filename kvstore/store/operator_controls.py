"""OperatorControls: the operator's half of the store (``ManagedStore``), apart from the data path.

* ``set_read_only(True)``: writes (``put``, ``lease_write``) raise ``Draining``;
  reads, lookups, deletes and flushes keep working (the store asks
  ``read_only`` before each write).
* ``pin`` / ``unpin``: keep a cached prefix resident in the CPU tier: a read
  lease (taken through the store's public lease calls) held until unpinned;
  locked blocks are never evicted, demoted nor overwritten. ``PinTable``
  keeps the distinct pinned bytes within ``pin_budget_bytes``.
* ``evict``: drop a namespace's blocks, or those under a prefix, from every
  tier (SSD copies included); pinned and in-use blocks are skipped.
* ``set_policy``: replace a memory tier's eviction policy at run time; the
  resident blocks move to the new policy, oldest access first.

Everything runs under the store lock it is given, except taking a pin's lease.
"""

from __future__ import annotations

import threading

from kvstore.errors import InvalidArgument, NotFound
from kvstore.keys import block_keys
from kvstore.store.block_state import policy_key, subtree_keys
from kvstore.store.config import StoreConfig
from kvstore.store.namespace_table import NamespaceTable
from kvstore.store.pin_table import PinTable
from kvstore.store.tier_set import TierSet
from kvstore.store_api import EvictResult, LeasingStore, PinInfo
from kvstore.tokens import as_tokens


class OperatorControls:
    def __init__(self, store: LeasingStore, lock: threading.RLock, namespaces: NamespaceTable,
                 tiers: TierSet, config: StoreConfig):
        self._store = store
        self._lock = lock
        self._ns = namespaces
        self._tiers = tiers
        self._config = config
        self.pins = PinTable(config.pin_budget_bytes)
        self.read_only = False

    # -- pins -------------------------------------------------------------------
    def _pin_key(self, ns: bytes, tokens, extra: bytes):
        arr = as_tokens(tokens)
        with self._lock:
            bt = self._ns.get(ns).spec.block_tokens
        if len(arr) < bt:
            raise InvalidArgument(f"a prefix needs at least one whole block ({bt} tokens)")
        arr = arr[: len(arr) // bt * bt]
        return arr, (bytes(ns), arr.tobytes(), bytes(extra))

    def pin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo:
        """Keep the cached part of this prefix resident (idempotent per prefix)."""
        arr, key = self._pin_key(ns, tokens, extra)
        with self._lock:
            pin = self.pins.get(key)
            if pin is not None:
                return pin.info
        lease = self._store.lease_read(ns, arr, extra)  # promotes SSD blocks, locks the path
        try:
            with self._lock:
                spec = self._ns.get(ns).spec
                if lease.num_tokens == 0:
                    raise NotFound("prefix not cached: nothing to pin")
                won = self.pins.get(key)
                if won is not None:  # a concurrent pin of the same prefix won
                    self._store.release(lease.lease_id)
                    return won.info
                bb = spec.block_bytes
                keys = [policy_key(ns, k)
                        for k in block_keys(arr[: lease.num_tokens], spec.block_tokens, extra)]
                info = PinInfo(bytes(ns), lease.num_tokens, len(keys) * bb)
                self.pins.add(key, info, lease.lease_id, keys, bb)
                return info
        except BaseException:
            self._store.release(lease.lease_id)
            raise

    def unpin(self, ns: bytes, tokens, extra: bytes = b"") -> PinInfo:
        """Release the pin made with the same prefix; ``NotFound`` when there is none."""
        _, key = self._pin_key(ns, tokens, extra)
        with self._lock:
            pin = self.pins.remove(key)
            self._store.release(pin.lease_id)
            return pin.info

    def pinned_bytes_of(self, ns: bytes) -> int:
        """Bytes of the distinct pinned blocks of one namespace."""
        with self._lock:
            nst = self._ns.find(ns)
            return 0 if nst is None else self.pins.blocks_of(ns) * nst.spec.block_bytes

    # -- eviction by namespace / prefix -------------------------------------------
    def evict(self, ns: bytes, tokens=None, extra: bytes = b"") -> EvictResult:
        """Drop every block of ``ns`` (no tokens) or every sequence starting with the prefix."""
        with self._lock:
            nst = self._ns.get(ns)
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
            dropped = sum(self._tiers.remove_subtree(nst, k) for k in starts)
            return EvictResult(dropped, dropped * nst.spec.block_bytes, total - dropped)

    # -- policies -----------------------------------------------------------------
    def set_policy(self, tier_name: str, policy_name: str) -> str:
        """Give tier ``tier_name`` a fresh ``policy_name`` policy; returns the previous name."""
        with self._lock:
            tier = self._tiers.named(tier_name)
            policy = self._config.make_policy(policy_name)
            previous = tier.policy.name
            self._tiers.set_policy(tier, policy)
            setattr(self._config, f"{tier.name}_policy", policy_name)
            return previous
