"""kvstore.store: the tiered block store (GPU, CPU arena, SSD) behind every carrier.

Public surface: ``TieredStore`` (the ``ManagedStore`` of ``kvstore.store_api``
that the daemon serves and ``KVClient.connect("embedded")`` embeds) and its
settings, ``StoreConfig``. The parts it is built from, each owning its state:
``namespace_table``, ``lease_table``, ``pin_table``, ``operator_controls``,
``tier_set`` (memory tiers, policies, demotion), ``write_back`` (the SSD
writer), ``promotion``; below them the memory tiers (``cpu_tier``,
``gpu_tier``, ``slab``, ``tenant_arenas``) and ``rebuild`` (trees from the SSD
after a restart). The SSD tier itself is ``kvstore.ssd``.
"""

from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

__all__ = ["StoreConfig", "TieredStore"]
