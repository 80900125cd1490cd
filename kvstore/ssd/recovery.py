"""Rebuilding the SSD tier's index from its segments after a restart."""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.keys import ROOT_KEY
from kvstore.ssd.fs import SSDFileSystem
from kvstore.ssd.record import (
    FLAG_TOMBSTONE,
    SSDLocation,
    SSDRecordHeader,
    header_from_fields,
    tombstone_pairs,
)
from kvstore.ssd.segment import Segment, scan_segment

Key = tuple[bytes, bytes]


def scan_all(fs: SSDFileSystem, segments: Iterable[Segment], verify: bool, collect: bool):
    """Scan segments (oldest first); returns ``(found, index, next_seq)``.

    ``index`` maps every live ``(namespace, key)`` to its newest record's
    location; ``found`` maps the same keys, in the order their live records
    were written, to ``(header or None, location)`` (headers only when
    ``collect``). Tombstones delete the records written before them. Every
    segment's ``live`` set is rebuilt.
    """
    segments = list(segments)
    by_id = {s.id: s for s in segments}
    found: dict[Key, tuple[SSDRecordHeader | None, SSDLocation]] = {}
    index: dict[Key, SSDLocation] = {}
    seq = 0
    for seg in segments:
        seg.live = set()
    for seg in segments:
        for rec in scan_segment(fs, seg, verify):
            seq = max(seq, rec.fields.seq + 1)
            if rec.fields.flags & FLAG_TOMBSTONE:
                doomed = tombstone_pairs(rec.payload)
            else:
                doomed = [(rec.fields.namespace, rec.fields.key)]
            for k in doomed:
                old = index.pop(k, None)
                if old is not None:
                    by_id[old.segment].live.discard(k)
                    found.pop(k, None)
            if rec.fields.flags & FLAG_TOMBSTONE:
                continue
            k = doomed[0]
            index[k] = rec.location
            seg.live.add(k)
            found[k] = (header_from_fields(rec.fields, rec.meta) if collect else None,
                        rec.location)
    return found, index, seq


def parents_first(found: dict) -> list[tuple[SSDRecordHeader, SSDLocation]]:
    """Records in write order, each moved after its parent when the parent is live.

    The CPU tier demotes leaves first, so children often reach the SSD before
    their parents; a radix tree is rebuilt parent first.
    """
    out = []
    emitted: set[Key] = set()
    for k in found:
        chain = []
        cur = k
        while cur not in emitted and cur in found:
            emitted.add(cur)
            chain.append(cur)
            header = found[cur][0]
            if header.parent == ROOT_KEY:
                break
            cur = (header.namespace, header.parent)
        out.extend(found[c] for c in reversed(chain))
    return out
