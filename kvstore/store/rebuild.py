"""Rebuild a TieredStore's namespaces and radix trees from the SSD tier after a restart.

The SSD tier returns its live records (``recover()``); each record names its
namespace, its key, its parent's key, its own block of tokens and ``extra``.
Records may come in any order (demotion writes leaf tails before their
parents), so the rebuild links them by parent key instead:

1. namespaces come back from the manifest (``load_namespaces``); records of a
   namespace not in it are removed;
2. a record is valid when its key is exactly ``block_key(parent, tokens,
   extra)``, its token count is the namespace's ``block_tokens``, its payload
   length is the namespace's ``block_bytes`` and its parent is the root or a
   valid record with the same ``extra``; anything else (orphans of a freed
   segment, garbage) is removed from the SSD tier;
3. every valid record without a valid child is inserted with its whole chain,
   as an SSD-only block (a get reads it and promotes it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from kvstore.keys import ROOT_KEY, block_key
from kvstore.namespace_spec import NamespaceSpec
from kvstore.ssd.tier import SSDTier
from kvstore.store.block_state import BlockState, NamespaceState, new_meta
from kvstore.tokens import as_tokens

log = logging.getLogger("kvstore.store")


def rebuild_from_ssd(ssd: SSDTier, namespaces: dict[bytes, NamespaceState],
                     remove: Callable[[bytes, bytes], object]) -> None:
    """Fill ``namespaces`` (empty) from ``ssd``; ``remove(fp, key)`` each unusable record."""
    for fp, data in ssd.load_namespaces().items():
        spec = NamespaceSpec.from_dict(data)
        if spec.fingerprint != bytes(fp):
            log.error("manifest entry %s does not match its spec; skipped", bytes(fp).hex())
            continue
        namespaces[spec.fingerprint] = NamespaceState.create(spec)
    by_ns: dict[bytes, dict] = {}
    bad = []
    for header, loc in ssd.recover():
        fp = bytes(header.namespace)
        if fp not in namespaces:
            bad.append((fp, bytes(header.key)))
            continue
        by_ns.setdefault(fp, {})[bytes(header.key)] = (header, loc)
    for fp, records in by_ns.items():
        bad.extend(_rebuild_namespace(namespaces[fp], records))
    for fp, key in bad:
        remove(fp, key)
    if bad:
        log.warning("dropped %d unusable SSD records on recovery", len(bad))


def _rebuild_namespace(nst: NamespaceState, records: dict) -> list:
    spec, bt = nst.spec, nst.spec.block_tokens
    status: dict[bytes, bool] = {}

    def valid(key: bytes) -> bool:
        chain, seen = [], set()
        while key not in status:
            if key == ROOT_KEY:
                break
            rec = records.get(key)
            if rec is None or key in seen:  # missing parent, or a corrupt cycle
                status[key] = False
                break
            seen.add(key)
            chain.append(key)
            key = bytes(rec[0].parent)
        ok = key == ROOT_KEY or status[key]
        for k in reversed(chain):  # from the top of the chain down
            if ok:
                h = records[k][0]
                tokens = as_tokens(h.tokens)
                parent = bytes(h.parent)
                ok = (
                    len(tokens) == bt
                    and h.payload_len == spec.block_bytes
                    and (parent == ROOT_KEY or bytes(records[parent][0].extra) == bytes(h.extra))
                    and block_key(parent, tokens, bytes(h.extra)) == k
                )
            status[k] = ok
        return ok

    good = [k for k in records if valid(k)]
    has_child = {bytes(records[k][0].parent) for k in good}
    metas: dict[bytes, object] = {}
    for leaf in (k for k in good if k not in has_child):
        chain, key = [], leaf
        while key != ROOT_KEY:
            chain.append(key)
            key = bytes(records[key][0].parent)
        chain.reverse()
        blocks = []
        for k in chain:
            meta = metas.get(k)
            if meta is None:
                h, loc = records[k]
                st = BlockState(bytes(h.parent), bytes(h.extra), ssd=loc)
                meta = metas[k] = new_meta(k, spec.block_bytes, st)
            blocks.append(meta)
        tokens = np.concatenate([as_tokens(records[k][0].tokens) for k in chain])
        nst.tree.insert(tokens, blocks, bytes(records[leaf][0].extra))
    return [(nst.fp, k) for k in records if not status.get(k)]
