"""kvstore.store: the tiered block store (GPU, CPU arena, SSD) behind every carrier.

Public surface: ``TieredStore`` (the ``BlockStore`` of ``kvstore.store_api``
that the daemon serves and ``KVClient.connect("embedded")`` embeds) and its
settings, ``StoreConfig``. The parts it is built from (memory tiers, slab
allocator, shared arena, leases, tier movement, SSD write-back) live in this
package; the SSD tier itself is ``kvstore.ssd``.
"""

from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

__all__ = ["StoreConfig", "TieredStore"]
