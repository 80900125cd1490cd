"""PinTable alone: overlapping pins share blocks, the budget counts distinct bytes."""

import pytest

from kvstore.errors import CapacityError, NotFound
from kvstore.store.block_state import policy_key
from kvstore.store.pin_table import PinTable
from kvstore.store_api import PinInfo

NS, OTHER = b"n" * 16, b"o" * 16
BB = 100  # bytes per block


def keys(ns, n):
    return [policy_key(ns, bytes([i]) * 16) for i in range(n)]


def pin(table, ns, n, lease_id):
    key = (ns, bytes(n), b"")
    return table.add(key, PinInfo(ns, 4 * n, n * BB), lease_id, keys(ns, n), BB)


def test_overlapping_pins_charge_shared_blocks_once():
    table = PinTable(budget=10 * BB)
    pin(table, NS, 2, 1)
    pin(table, NS, 4, 2)  # the first two blocks are already pinned
    pin(table, OTHER, 1, 3)
    assert table.pinned_bytes == 5 * BB and len(table) == 3
    assert table.blocks_of(NS) == 4 and table.blocks_of(OTHER) == 1
    assert table.get((NS, bytes(4), b"")).lease_id == 2
    assert table.remove((NS, bytes(4), b"")).lease_id == 2
    assert table.pinned_bytes == 3 * BB  # the short pin still holds 2 blocks
    assert [i.namespace for i in table.infos()] == [NS, OTHER]
    with pytest.raises(NotFound):
        table.remove((NS, bytes(4), b""))


def test_a_pin_over_the_budget_is_refused_and_records_nothing():
    table = PinTable(budget=3 * BB)
    pin(table, NS, 2, 1)
    with pytest.raises(CapacityError):
        pin(table, NS, 4, 2)  # 2 more blocks: 4 in all
    assert table.pinned_bytes == 2 * BB and len(table) == 1 and table.blocks_of(NS) == 2
    pin(table, NS, 3, 2)  # one more block fits
    assert table.pinned_bytes == 3 * BB
