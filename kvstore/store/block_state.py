"""Per-block and per-namespace state of the TieredStore.

Every block in a namespace's ``RadixTree`` carries a ``BlockState`` as its
``BlockMeta.handle``. A block lives in at most one memory tier (GPU or CPU:
``tier``/``slot``) and may also have a copy on SSD (``ssd``); between being
evicted from memory and landing on SSD its bytes sit in ``staged``::

    resident, dirty   tier=CPU slot=s  ssd=None     (only in memory)
    resident, clean   tier=CPU slot=s  ssd=loc      (eviction just frees s)
    in flight         tier=None        staged=bytes (the SSD writer has it queued)
    on SSD only       tier=None        ssd=loc      (a get reads it, then promotes)

Policies see blocks as ``policy key = namespace id (16 bytes) + block key``,
since equal token runs in two namespaces have equal block keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvstore.namespace_spec import NamespaceSpec
from kvstore.prefix_index import BlockMeta, RadixTree, Tier


class BlockState:
    __slots__ = ("parent", "extra", "tier", "slot", "ssd", "staged", "writing", "lost")

    def __init__(self, parent: bytes, extra: bytes, tier=None, slot=None, ssd=None):
        self.parent = parent
        self.extra = extra
        self.tier = tier  # MemoryTier holding the bytes, or None
        self.slot = slot  # ArenaSlot in that tier
        self.ssd = ssd  # SSD location of a copy, or None
        self.staged = None  # bytes waiting for the SSD writer
        self.writing = False  # an SSD write job for this block is queued
        self.lost = False  # bytes gone (SSD failure) but pinned: removed on release

    def tier_enum(self) -> Tier:
        return self.tier.tier if self.tier is not None else Tier.SSD


@dataclass
class NamespaceState:
    spec: NamespaceSpec
    fp: bytes
    tree: RadixTree
    hits: int = 0  # blocks served by reads (``ReadCounters``)
    misses: int = 0  # blocks asked for by reads and not served
    lookup_hits: int = 0  # blocks found by lookups
    lookup_misses: int = 0  # blocks looked up and not found

    @classmethod
    def create(cls, spec: NamespaceSpec) -> NamespaceState:
        return cls(spec, spec.fingerprint, RadixTree(spec.block_tokens))

    def state(self, key: bytes) -> BlockState | None:
        meta = self.tree.get(key)
        return None if meta is None else meta.handle


def policy_key(fp: bytes, key: bytes) -> bytes:
    """The key a tier's policy knows a block by: namespace id (16 bytes) + block key."""
    return fp + key


def split_policy_key(pk: bytes) -> tuple[bytes, bytes]:
    return pk[:16], pk[16:]


def block_tokens_of(tree: RadixTree, key: bytes) -> np.ndarray:
    """The token ids of block ``key`` alone (``block_tokens`` of them)."""
    node = tree.node_of(key)
    idx = next(i for i, b in enumerate(node.blocks) if b.key == key)
    bt = tree.block_tokens
    return np.array(node.tokens[idx * bt : (idx + 1) * bt])


def subtree_keys(tree: RadixTree, key: bytes) -> list[bytes]:
    """``key`` and every block cached after it, parents before children."""
    node = tree.node_of(key)
    if node is None:
        return []
    start = next(i for i, b in enumerate(node.blocks) if b.key == key)
    order = [b.key for b in node.blocks[start:]]
    stack = list(node.children.values())
    while stack:
        n = stack.pop()
        order.extend(b.key for b in n.blocks)
        stack.extend(n.children.values())
    return order


def private_tail(tree: RadixTree, chain: list[bytes]) -> list[bytes]:
    """The blocks at the end of the prefix ``chain`` (its keys, in order) that no other
    cached sequence goes through, deepest first: the last block if nothing extends it,
    then each block above whose only branch is the private one below it."""
    out: list[bytes] = []
    for key in reversed(chain):
        if tree.num_children(key) != (1 if out else 0):
            break
        out.append(key)
    return out


def new_meta(key: bytes, size: int, state: BlockState) -> BlockMeta:
    return BlockMeta(key=key, size=size, tier=state.tier_enum(), handle=state)


class CompositeTreeView:
    """TreeView over every namespace's tree, for one tier's policy (keys are policy keys).

    ``parent`` (which lets a policy park a vetoed interior block until one of
    its children leaves, ``kvstore.eviction.scan``) is offered only by
    ``StructuralTreeView``: for a tier whose victims are dropped, where the only
    lasting reason to turn down an interior block is that it has children. A
    tier that demotes (to a tier below, or to SSD) may evict any unlocked
    block, so its vetoes of interior blocks are transient (locked, staging
    full) and parking them would take them out of the policy's order.
    """

    def __init__(self, namespaces: dict[bytes, NamespaceState]):
        self._ns = namespaces

    def depth(self, pk: bytes) -> int:
        fp, key = split_policy_key(pk)
        return self._ns[fp].tree.depth(key)

    def num_children(self, pk: bytes) -> int:
        fp, key = split_policy_key(pk)
        return self._ns[fp].tree.num_children(key)


class StructuralTreeView(CompositeTreeView):
    """A ``CompositeTreeView`` with ``parent``: for a tier that drops its victims."""

    def parent(self, pk: bytes) -> bytes | None:
        """Policy key of the block before ``pk`` in its prefix (None for a first block)."""
        fp, key = split_policy_key(pk)
        parent = self._ns[fp].tree.parent(key)
        return None if parent is None else policy_key(fp, parent)


def tree_view(namespaces: dict[bytes, NamespaceState], drops_victims: bool) -> CompositeTreeView:
    """The view a tier's policy is bound to (see ``CompositeTreeView``)."""
    return StructuralTreeView(namespaces) if drops_victims else CompositeTreeView(namespaces)
