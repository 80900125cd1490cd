"""kvstore.prefix_index: block-granular radix tree over token ids."""

from kvstore.prefix_index.block import BlockMeta, Tier
from kvstore.prefix_index.node import RadixNode
from kvstore.prefix_index.tree import InsertResult, MatchResult, RadixTree

__all__ = ["BlockMeta", "Tier", "RadixNode", "RadixTree", "MatchResult", "InsertResult"]
