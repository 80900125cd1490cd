"""The lookup walk: a query's bytes against the tree's edges, counting cached tokens.

``RadixTree.match`` compares token runs with numpy and collects the blocks
it passes; a lookup needs only the count, once per waiting request and
scheduler step. So this walk compares bytes: the query's bytes are made once
(none for an array over a whole ``bytes`` object: ``query_bytes``), each
child is found by the bytes of its first block (the node's ``children``
key), and each edge is compared with one ``memcmp`` (``startswith``) against
the node's kept ``edge_bytes``::

    query bytes   | block 0 | block 1 | block 2 | block 3 | tail |
    edge A        | block 0 | block 1 |                              children[block 0]
    edge B                  ...       | block 2 | block 3' |          children[block 2]
                                                  ^ a mismatch: found below, by numpy

Only where a query leaves an edge inside it does the walk go back to tokens
(numpy, to find the first differing block).
"""

from __future__ import annotations

import numpy as np

from kvstore.prefix_index.node import RadixNode
from kvstore.prefix_index.query_bytes import query_bytes
from kvstore.tokens import TOKEN_DTYPE

_WIDTH = TOKEN_DTYPE.itemsize


def cached_by_bytes(root: RadixNode | None, block_tokens: int, query: np.ndarray) -> int:
    """Leading tokens of ``query`` (1-D uint32) cached under ``root``, whole blocks only."""
    if root is None:
        return 0
    node = root
    step = block_tokens * _WIDTH  # one block's bytes
    raw = query_bytes(query)
    end = (len(raw) // step) * step  # whole blocks only
    at = 0
    while at < end:
        child = node.children.get(raw[at : at + step])
        if child is None:
            return at // _WIDTH
        edge = child.edge_bytes
        if len(edge) <= end - at:
            if not raw.startswith(edge, at):
                break  # a mismatch inside this edge: found below
            at += len(edge)
            node = child
            continue
        if edge.startswith(raw[at:end]):  # the query ends inside this edge
            return end // _WIDTH
        break
    else:
        return at // _WIDTH
    pos = at // _WIDTH  # locate the first differing token of the edge
    n = min(len(child.tokens), end // _WIDTH - pos)
    first = int((child.tokens[:n] != query[pos : pos + n]).argmax())
    return pos + first // block_tokens * block_tokens
