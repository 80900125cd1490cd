"""LeaseTable alone: fresh ids, records, take once, discard twice."""

import pytest

from kvstore.errors import NotFound
from kvstore.store.block_state import NamespaceState
from kvstore.store.lease_table import LeaseTable
from kvstore.store_api import ArenaSlot

from .helpers import make_spec


def test_leases_get_fresh_ids_and_are_taken_once():
    table, nst = LeaseTable(), NamespaceState.create(make_spec())
    read = table.open(nst, node=None, tier=None, num_tokens=8, slots=[ArenaSlot(0, 512)])
    write = table.open(nst, node=None, tier=None, num_tokens=12,
                       slots=[ArenaSlot(512, 512), ArenaSlot(1024, 512)], first_block=1,
                       writable=True)
    assert read.lease.lease_id != write.lease.lease_id
    assert read.lease.namespace == nst.fp and not read.lease.writable
    assert len(table) == 2 and write.lease.writable and write.lease.first_block == 1
    assert table.peek(write.lease.lease_id) is write
    assert table.take(write.lease.lease_id) is write
    with pytest.raises(NotFound):
        table.take(write.lease.lease_id)
    assert table.discard(write.lease.lease_id) is None  # releasing twice is harmless
    assert table.discard(read.lease.lease_id) is read
    assert len(table) == 0
    with pytest.raises(NotFound):
        table.peek(read.lease.lease_id)
