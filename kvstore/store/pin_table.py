"""PinTable: prefixes pinned by the operator, and the bytes they hold against a budget.

A pin is a read lease the store holds on the operator's behalf (its blocks
stay resident in the CPU tier). Pins overlap: two pins of one prefix's
leading blocks share them, so the table counts references per block and
charges each distinct block's bytes once. A pin that would take the
distinct pinned bytes past ``budget`` is refused with ``CapacityError``.
Not thread-safe on its own: the store calls it under its lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from kvstore.errors import CapacityError, NotFound
from kvstore.store.block_state import split_policy_key
from kvstore.store_api import PinInfo

PinKey = tuple[bytes, bytes, bytes]  # (namespace, whole-block tokens as bytes, extra)


@dataclass
class Pin:
    info: PinInfo
    lease_id: int  # the read lease that keeps the blocks resident
    keys: list[bytes]  # policy keys of the pinned blocks
    block_bytes: int


class PinTable:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._pins: dict[PinKey, Pin] = {}
        self._refs: Counter[bytes] = Counter()
        self._bytes = 0

    @property
    def pinned_bytes(self) -> int:
        """Bytes of the distinct pinned blocks."""
        return self._bytes

    def get(self, key: PinKey) -> Pin | None:
        return self._pins.get(key)

    def add(self, key: PinKey, info: PinInfo, lease_id: int, keys: list[bytes],
            block_bytes: int) -> Pin:
        """Record a pin; ``CapacityError`` (nothing recorded) when over the budget."""
        fresh = {k for k in keys if self._refs[k] == 0}
        more = len(fresh) * block_bytes
        if self._bytes + more > self.budget:
            raise CapacityError(
                f"pinning {more} more bytes exceeds the pin budget "
                f"({self._bytes} of {self.budget} bytes pinned)"
            )
        self._refs.update(keys)
        self._bytes += more
        pin = self._pins[key] = Pin(info, lease_id, keys, block_bytes)
        return pin

    def remove(self, key: PinKey) -> Pin:
        """Forget a pin (the caller releases its lease); ``NotFound`` when there is none."""
        pin = self._pins.pop(key, None)
        if pin is None:
            raise NotFound("no pin on this prefix")
        self._refs.subtract(pin.keys)
        for k in set(pin.keys):
            if self._refs[k] <= 0:
                del self._refs[k]
                self._bytes -= pin.block_bytes
        return pin

    def infos(self) -> list[PinInfo]:
        return [p.info for p in self._pins.values()]

    def blocks_of(self, ns: bytes) -> int:
        """Distinct pinned blocks of namespace ``ns``."""
        return sum(1 for k in self._refs if split_policy_key(k)[0] == ns)

    def __len__(self) -> int:
        return len(self._pins)
