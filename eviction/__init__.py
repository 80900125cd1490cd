"""kvstore.eviction: pluggable eviction policies (one per tier)."""

from kvstore.eviction.base import EvictionPolicy, MayEvict, TreeView
from kvstore.eviction.lru import LRUPolicy

__all__ = ["EvictionPolicy", "MayEvict", "TreeView", "LRUPolicy"]
