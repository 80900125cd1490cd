"""A node of the block-granular radix tree.

A node's edge is a run of whole blocks: ``tokens`` holds ``len(blocks) *
block_tokens`` token ids and ``blocks[i]`` describes the i-th block of that
run. Children are keyed by the bytes of their first block, so a lookup step is
one dict probe plus one numpy comparison of the edge::

    root
     └─ [b0 b1 b2]            edge of 3 blocks (tokens: 3*B ids)
         ├─ [b3 b4]           child keyed by bytes(tokens of b3)
         └─ [b3' b4' b5']     sibling keyed by bytes(tokens of b3')

``lock_count`` counts readers/writers of this node or any descendant: a node
with lock_count > 0 is never evicted.
"""

from __future__ import annotations

import numpy as np

from kvstore.prefix_index.block import BlockMeta


class RadixNode:
    __slots__ = ("_tokens", "_edge_bytes", "blocks", "children", "parent", "lock_count",
                 "depth_blocks")

    def __init__(self, tokens: np.ndarray, blocks: list[BlockMeta], parent: RadixNode | None):
        self.tokens = tokens
        self.blocks = blocks
        self.children: dict[bytes, RadixNode] = {}
        self.parent = parent
        self.lock_count = 0
        # number of blocks from the root to the start of this node's edge
        self.depth_blocks = 0 if parent is None else parent.depth_blocks + len(parent.blocks)

    @property
    def tokens(self) -> np.ndarray:
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: np.ndarray) -> None:  # a split or a merge: new edge bytes
        self._tokens = tokens
        self._edge_bytes: bytes | None = None

    @property
    def edge_bytes(self) -> bytes:
        """``tokens`` as bytes, made on first use and kept (edges are replaced, never
        written): lookups compare a query's bytes against it with one ``memcmp``."""
        if self._edge_bytes is None:
            self._edge_bytes = self._tokens.tobytes()
        return self._edge_bytes

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"RadixNode(blocks={len(self.blocks)}, children={len(self.children)}, "
            f"depth={self.depth_blocks}, locks={self.lock_count})"
        )
