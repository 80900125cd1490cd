"""Block-granular radix tree over token ids (RadixAttention with page = block).

One tree per namespace; one root per ``extra`` (LoRA id, multimodal hashes,
salt), since equal tokens under a different ``extra`` are different KV.

* ``match`` walks the tree comparing whole token runs with numpy and returns
  the number of leading tokens cached and their blocks.
* ``insert`` adds the blocks of a prompt that are not cached yet, splitting a
  node where the prompt leaves its edge at a block boundary.
* ``lock``/``unlock`` pin the path to a node: locked blocks are never removed.
* ``remove`` takes a block off the tree; only the last block of an unlocked
  leaf may go, so a cached prefix never loses its middle.

Every block is also reachable by its key (``get``), so eviction policies can
name blocks by key. ``generation`` moves on with every change that can
change a lookup's answer; ``answer_cache`` keeps answers under it. Not
thread-safe: the owning store serialises access.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import floordiv

import numpy as np

from kvstore.errors import InvalidArgument
from kvstore.prefix_index.answer_cache import AnswerCache, cacheable
from kvstore.prefix_index.block import BlockMeta
from kvstore.prefix_index.byte_walk import cached_by_bytes
from kvstore.prefix_index.node import RadixNode
from kvstore.tokens import TOKEN_DTYPE, as_tokens

_EMPTY = np.empty(0, dtype=TOKEN_DTYPE)


@dataclass
class MatchResult:
    """Longest cached prefix of a query: ``num_tokens`` tokens in ``blocks``."""

    num_tokens: int
    blocks: list[BlockMeta] = field(default_factory=list)
    node: RadixNode | None = None  # deepest node touched; lock it to pin the prefix

    @property
    def keys(self) -> list[bytes]:
        return [b.key for b in self.blocks]


@dataclass
class InsertResult:
    """Outcome of an insert: how many leading blocks existed, which were added."""

    existing_blocks: int
    added: list[BlockMeta]
    node: RadixNode | None


class RadixTree:
    def __init__(self, block_tokens: int, clock=time.monotonic):
        if block_tokens <= 0:
            raise InvalidArgument("block_tokens must be positive")
        self.block_tokens = block_tokens
        self.clock = clock
        self._roots: dict[bytes, RadixNode] = {}
        self._node_of: dict[bytes, RadixNode] = {}  # block key -> node holding it
        # A block's depth and parent never change (keys are chained), so they
        # are kept per key: depth/parent/get are O(1) instead of a scan of the edge.
        self._depth_of: dict[bytes, int] = {}
        self._parent_of: dict[bytes, bytes | None] = {}
        self.generation = 0  # moved on by every insert that adds blocks, removal and clear
        self.answers = AnswerCache()

    # -- queries ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._node_of)

    def __contains__(self, key: bytes) -> bool:
        return key in self._node_of

    def get(self, key: bytes) -> BlockMeta | None:
        node = self._node_of.get(key)
        if node is None:
            return None
        return node.blocks[self._index(node, key)]

    def node_of(self, key: bytes) -> RadixNode | None:
        return self._node_of.get(key)

    def depth(self, key: bytes) -> int:
        """Blocks from the root to ``key`` inclusive (TreeView for eviction policies)."""
        return self._depth_of[key]

    def num_children(self, key: bytes) -> int:
        """Branches directly below block ``key`` (TreeView for eviction policies)."""
        node = self._node_of[key]
        return len(node.children) if node.blocks[-1].key == key else 1

    def parent(self, key: bytes) -> bytes | None:
        """Key of the block before ``key`` in its prefix; None for a first block (TreeView)."""
        return self._parent_of[key]

    def match(self, tokens, extra: bytes = b"", touch: bool = False) -> MatchResult:
        """Longest cached prefix of ``tokens`` (whole blocks only)."""
        query = as_tokens(tokens)
        root = self._roots.get(extra)
        result = MatchResult(0, [], root)
        if root is None:
            return result
        now = self.clock() if touch else 0.0
        node, pos = root, 0
        limit = (len(query) // self.block_tokens) * self.block_tokens
        while pos < limit:
            child = node.children.get(self._first_block_bytes(query, pos))
            if child is None:
                break
            n = self._common_blocks(child, query, pos)
            taken = child.blocks[:n]
            if touch:
                for block in taken:
                    block.hits += 1
                    block.last_access = now
            result.blocks.extend(taken)
            result.node = child
            pos += n * self.block_tokens
            if n < len(child.blocks):
                break
            node = child
        result.num_tokens = pos
        return result

    def cached_tokens(self, query: np.ndarray, extra: bytes = b"") -> int:
        """``match(query, extra).num_tokens`` without building the match (a lookup's count).

        ``query`` must already be 1-D uint32 (``as_tokens``): this is the hot
        path of lookups (one per waiting request and scheduler step), so it
        walks the same edges as ``match`` by their bytes (``byte_walk``),
        collecting no blocks and touching nothing. A prompt its caller keeps (an array over its own ``bytes``: the prompt
        memo's) has its answer kept too, reused while the tree is unchanged
        (``answer_cache``).
        """
        if not cacheable(query):
            return self._walk(query, extra)
        return self.cached_tokens_many([query], extra)[0]

    def kept_answers(self, queries, extra: bytes = b"") -> tuple[list[int], int] | None:
        """``cached_tokens`` of every query and the whole blocks they ask about, when the
        answers are kept: ``queries`` is the tuple last answered whole (a repeated step),
        or each query's answer is kept (then each query is an array this tree walked); so
        no check of the caller's objects is needed. Else None."""
        generation, answers = self.generation, self.answers
        again = answers.get_batch(queries, generation, extra)
        if again is not None:
            return again
        known = answers.get_all(queries, generation, extra)
        if known is None:
            return None
        whole = self.whole_blocks(queries)
        if isinstance(queries, tuple):  # a tuple of kept arrays: kept whole too
            answers.put_batch(queries, generation, extra, known, whole)
        return known, whole

    def whole_blocks(self, queries) -> int:
        """The whole blocks of all ``queries`` together (each one's tail left out)."""
        return sum(map(floordiv, map(len, queries), repeat(self.block_tokens)))

    def cached_tokens_many(self, queries, extra: bytes = b"") -> list[int]:
        """``cached_tokens`` of each query (1-D uint32 arrays), the kept answers looked up
        in one pass."""
        generation, answers = self.generation, self.answers
        known = answers.get_many(queries, generation, extra)
        if None not in known:
            return known
        for i, (query, n) in enumerate(zip(queries, known)):
            if n is None:  # walked once; kept when its caller keeps the prompt
                known[i] = n = self._walk(query, extra)
                if cacheable(query):
                    answers.put(query, generation, extra, n)
        return known

    def _walk(self, query: np.ndarray, extra: bytes) -> int:
        """``cached_tokens`` by walking the tree (``byte_walk``)."""
        return cached_by_bytes(self._roots.get(extra), self.block_tokens, query)

    def lock(self, node: RadixNode | None) -> None:
        while node is not None:
            node.lock_count += 1
            node = node.parent

    def unlock(self, node: RadixNode | None) -> None:
        while node is not None:
            if node.lock_count <= 0:
                raise InvalidArgument("unlock without a matching lock")
            node.lock_count -= 1
            node = node.parent

    def is_locked(self, key: bytes) -> bool:
        node = self._node_of.get(key)
        return node is not None and node.lock_count > 0

    def is_evictable(self, key: bytes) -> bool:
        """True when ``key`` is the last block of an unlocked leaf."""
        node = self._node_of.get(key)
        return (
            node is not None
            and not node.children
            and node.lock_count == 0
            and node.blocks[-1].key == key
        )

    def leaves(self) -> Iterator[RadixNode]:
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            if node.is_leaf and not node.is_root:
                yield node
            stack.extend(node.children.values())

    def evictable_keys(self) -> Iterator[bytes]:
        for leaf in self.leaves():
            if leaf.lock_count == 0:
                yield leaf.blocks[-1].key

    def blocks(self) -> Iterator[BlockMeta]:
        for node in set(self._node_of.values()):
            yield from node.blocks

    def prefix_of(self, key: bytes) -> tuple[np.ndarray, bytes, list[BlockMeta]]:
        """Tokens, extra and blocks of the whole prefix ending with block ``key``."""
        node = self._node_of[key]
        idx = self._index(node, key)
        parts, blocks = [node.tokens[: (idx + 1) * self.block_tokens]], list(node.blocks[: idx + 1])
        while node.parent is not None and not node.parent.is_root:
            node = node.parent
            parts.append(node.tokens)
            blocks[:0] = node.blocks
        root = node.parent if node.parent is not None else node
        extra = next(e for e, r in self._roots.items() if r is root)
        return np.concatenate(parts[::-1]), extra, blocks

    # -- updates ------------------------------------------------------------
    def insert(self, tokens, blocks: Sequence[BlockMeta], extra: bytes = b"") -> InsertResult:
        """Add ``blocks`` (one per whole block of ``tokens``) not cached yet.

        Blocks already in the tree are kept as they are (their metadata wins);
        ``added`` lists the metas that entered the tree.
        """
        query = as_tokens(tokens)
        nblocks = len(query) // self.block_tokens
        if len(blocks) != nblocks:
            raise InvalidArgument(f"{nblocks} whole blocks in tokens but {len(blocks)} metas")
        root = self._roots.get(extra)
        if root is None:
            root = self._roots[extra] = RadixNode(_EMPTY, [], None)
        now = self.clock()
        node, pos, bi = root, 0, 0
        while bi < nblocks:
            child = node.children.get(self._first_block_bytes(query, pos))
            if child is None:
                break
            n = self._common_blocks(child, query, pos)
            if n < len(child.blocks):
                child = self._split(child, n)
            node, pos, bi = child, pos + n * self.block_tokens, bi + n
        existing = bi
        if bi == nblocks:
            return InsertResult(existing, [], node if node is not root else None)
        new = list(blocks[bi:])
        keys = [block.key for block in new]
        if len(set(keys)) != len(keys) or any(k in self._node_of for k in keys):
            raise InvalidArgument("block key already cached under another prefix")
        for block in new:
            block.inserted_at = block.last_access = now
        self.generation += 1
        leaf = RadixNode(np.array(query[pos : nblocks * self.block_tokens]), new, node)
        node.children[self._first_block_bytes(query, pos)] = leaf
        parent = node.blocks[-1].key if node.blocks else None
        for depth, key in enumerate(keys, bi + 1):
            self._node_of[key] = leaf
            self._depth_of[key] = depth
            self._parent_of[key] = parent
            parent = key
        return InsertResult(existing, new, leaf)

    def remove(self, key: bytes) -> BlockMeta:
        """Remove block ``key``: it must be the last block of an unlocked leaf."""
        if not self.is_evictable(key):
            raise InvalidArgument("only the last block of an unlocked leaf can be removed")
        self.generation += 1
        node = self._node_of.pop(key)
        del self._depth_of[key], self._parent_of[key]
        block = node.blocks.pop()
        if node.blocks:
            node.tokens = node.tokens[: len(node.blocks) * self.block_tokens]
            return block
        parent = node.parent
        del parent.children[self._first_block_bytes(node.tokens, 0)]
        if parent.is_root and not parent.children:
            self._roots = {e: r for e, r in self._roots.items() if r is not parent}
        elif not parent.is_root and len(parent.children) == 1 and parent.lock_count == 0:
            self._merge_with_only_child(parent)
        return block

    def remove_subtree(self, key: bytes) -> list[BlockMeta]:
        """Remove block ``key`` and every block cached after it (its extensions).

        Used when a lower tier loses a block outright (a freed SSD segment, a
        corrupt record): the blocks after it are unreachable as prefixes.
        Raises InvalidArgument when any of them is locked.
        """
        node = self._node_of.get(key)
        if node is None:
            return []
        start = self._index(node, key)
        order = [b.key for b in node.blocks[start:]]  # pre-order: parents before children
        stack = list(node.children.values())
        while stack:
            n = stack.pop()
            if n.lock_count:
                raise InvalidArgument("cannot remove a locked prefix")
            order.extend(b.key for b in n.blocks)
            stack.extend(n.children.values())
        if node.lock_count:
            raise InvalidArgument("cannot remove a locked prefix")
        # reversed pre-order: every block goes after all of its extensions,
        # so each one is the tail of a leaf when its turn comes
        removed = [self.remove(k) for k in reversed(order)]
        return removed

    def clear(self) -> None:
        self.generation += 1
        self.answers.clear()
        self._roots.clear()
        self._node_of.clear()
        self._depth_of.clear()
        self._parent_of.clear()

    # -- internals ----------------------------------------------------------
    def _first_block_bytes(self, tokens: np.ndarray, pos: int) -> bytes:
        return tokens[pos : pos + self.block_tokens].tobytes()

    def _index(self, node: RadixNode, key: bytes) -> int:
        """Position of block ``key`` on ``node``'s edge."""
        return self._depth_of[key] - node.depth_blocks - 1

    def _common_blocks(self, node: RadixNode, query: np.ndarray, pos: int) -> int:
        """Whole blocks of ``node``'s edge equal to ``query[pos:]`` (numpy compare)."""
        bt = self.block_tokens
        avail = min(len(node.tokens), ((len(query) - pos) // bt) * bt)
        if avail == 0:
            return 0
        diff = node.tokens[:avail] != query[pos : pos + avail]
        first = int(np.argmax(diff)) if diff.any() else avail
        return first // bt

    def _split(self, node: RadixNode, n: int) -> RadixNode:
        """Cut ``node``'s edge after ``n`` blocks; return the new upper node."""
        bt = self.block_tokens
        parent = node.parent
        upper = RadixNode(node.tokens[: n * bt], node.blocks[:n], parent)
        upper.lock_count = node.lock_count
        parent.children[self._first_block_bytes(node.tokens, 0)] = upper
        node.tokens, node.blocks, node.parent = node.tokens[n * bt :], node.blocks[n:], upper
        upper.children[self._first_block_bytes(node.tokens, 0)] = node
        self._redepth(node)
        for block in upper.blocks:
            self._node_of[block.key] = upper
        return upper

    def _merge_with_only_child(self, node: RadixNode) -> None:
        (child,) = node.children.values()
        if child.lock_count:
            return
        node.tokens = np.concatenate([node.tokens, child.tokens])
        node.blocks = node.blocks + child.blocks
        node.children = child.children
        for grandchild in node.children.values():
            grandchild.parent = node
        for block in child.blocks:
            self._node_of[block.key] = node

    def _redepth(self, node: RadixNode) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            n.depth_blocks = n.parent.depth_blocks + len(n.parent.blocks)
            stack.extend(n.children.values())
