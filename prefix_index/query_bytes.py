"""Token arrays that view their own ``bytes``: a lookup walks them without a copy.

The radix walk compares a query's bytes with each edge's (``RadixTree.
cached_tokens``), so a query is made bytes once per lookup (``tobytes``: a
16 KiB copy for 4,096 tokens). A prompt the daemon keeps across lookups (the
prompt memo of ``lookup_many``) is kept as an array over a ``bytes`` object
instead (``bytes_tokens``): every later walk of it takes those bytes as they
are (``query_bytes``), and the array owns exactly its prompt's memory.
"""

from __future__ import annotations

import numpy as np

from kvstore.tokens import TOKEN_DTYPE


def bytes_tokens(raw: bytes) -> np.ndarray:
    """A read-only token array over ``raw`` (whole uint32 tokens), no copy."""
    return np.frombuffer(raw, dtype=TOKEN_DTYPE)


def query_bytes(query: np.ndarray) -> bytes:
    """The bytes of a 1-D uint32 ``query``: the ``bytes`` it views whole (``bytes_tokens``),
    else a copy."""
    base = query.base
    if type(base) is bytes and len(base) == query.nbytes and query.flags.c_contiguous:
        return base  # an array over all of its bytes object, in order: those are its bytes
    return query.tobytes()
