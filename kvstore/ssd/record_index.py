"""RecordIndex: where each live block's newest record is, ``(namespace, key) -> SSDLocation``.

Also keeps each segment's ``live`` set in step (which keys a segment still
holds the newest record of), so freeing a segment knows what it takes away.
Thread-safe (one short lock); the tier's append lock orders the writers.
"""

from __future__ import annotations

import threading

from kvstore.ssd.record import SSDLocation
from kvstore.ssd.segment import Segment

Key = tuple[bytes, bytes]


class RecordIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: dict[Key, SSDLocation] = {}

    def replace(self, index: dict[Key, SSDLocation]) -> None:
        """Take a whole index (recovery rebuilt it and the segments' live sets)."""
        with self._lock:
            self._index = index

    def get(self, key: Key) -> SSDLocation | None:
        with self._lock:
            return self._index.get(key)

    def put(self, key: Key, loc: SSDLocation, seg: Segment, segments: dict[int, Segment]) -> None:
        """``key``'s newest record is now at ``loc`` in ``seg``."""
        with self._lock:
            old = self._index.get(key)
            if old is not None and old.segment in segments:
                segments[old.segment].live.discard(key)
            self._index[key] = loc
            seg.live.add(key)

    def remove(self, keys: list[Key], segments: dict[int, Segment]) -> list[Key]:
        """Forget ``keys``; returns those that were live (in order, once each)."""
        present = []
        with self._lock:
            for k in dict.fromkeys(keys):
                loc = self._index.pop(k, None)
                if loc is not None:
                    present.append(k)
                    seg = segments.get(loc.segment)
                    if seg is not None:
                        seg.live.discard(k)
        return present

    def drop_segment(self, seg: Segment) -> list[Key]:
        """``seg`` is being freed: forget the keys whose newest record it holds."""
        with self._lock:
            keys = [k for k in seg.live if k in self._index and self._index[k].segment == seg.id]
            for k in keys:
                del self._index[k]
            seg.live = set()
        return keys

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._index)

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)
