"""ARC (Megiddo & Modha, FAST'03): adaptive split between recency and frequency.

Resident blocks live in T1 (seen once recently) or T2 (seen at least twice);
B1 and B2 remember the keys recently evicted from each (ghosts, no data).
``p`` is the target size of T1 and learns from ghost hits: a miss found in B1
means T1 was too small (p grows by max(1, |B2|/|B1|)), one found in B2 means
T2 was (p shrinks by max(1, |B1|/|B2|)). A hit moves a block to the MRU end
of T2. REPLACE evicts the LRU block of T1 when ``|T1| > p`` (or ``|T1| = p``
and the last miss came from B2), else that of T2, and remembers its key in B1
or B2. Directory bounds, with c the capacity: ``|T1| + |B1| <= c`` and
``|T1| + |T2| + |B1| + |B2| <= 2c``. A long scan of blocks seen once only
churns T1, so T2 (the frequent blocks) survives it: scan resistance.

The paper's request loop is split along the interface: ``on_insert`` is the
miss path (ghost lookup, adapting ``p``), ``victims`` runs REPLACE. All O(1).
A candidate the tier turns down goes back to the LRU end of its list; when
the preferred list has nothing evictable the other one is used.
"""

from __future__ import annotations

from collections import OrderedDict

from kvstore.eviction.scan import ScanPolicy

T1, T2 = "T1", "T2"


class ARCPolicy(ScanPolicy):
    name = "arc"

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self._lists = {T1: OrderedDict(), T2: OrderedDict()}  # LRU first
        self._home: dict[bytes, str] = {}  # every resident key -> T1 or T2
        self._count = {T1: 0, T2: 0}  # resident keys per list, parked/pending too
        self._b1: OrderedDict[bytes, None] = OrderedDict()
        self._b2: OrderedDict[bytes, None] = OrderedDict()
        self.p = 0.0
        self._miss_in_b2 = False

    def _add(self, key: bytes, where: str) -> None:
        self._home[key] = where
        self._count[where] += 1
        self._lists[where][key] = None

    def on_insert(self, key: bytes) -> None:
        if key in self._home:
            self.on_access(key)
            return
        c = self._cap()
        b1, b2 = self._b1, self._b2
        self._miss_in_b2 = key in b2
        if key in b1:
            self.p = min(float(c), self.p + max(1.0, len(b2) / len(b1)))
            del b1[key]
            self._add(key, T2)
        elif key in b2:
            self.p = max(0.0, self.p - max(1.0, len(b1) / len(b2)))
            del b2[key]
            self._add(key, T2)
        else:
            self._add(key, T1)
        self._trim_ghosts()

    def on_access(self, key: bytes) -> None:
        if key not in self._home:
            return
        self._reactivate(key)
        if self._home[key] == T1:
            del self._lists[T1][key]
            self._count[T1] -= 1
            self._add(key, T2)
        else:
            self._lists[T2].move_to_end(key)

    def _pop(self) -> tuple[bytes, str] | None:
        t1 = self._count[T1]
        prefer_t1 = t1 >= 1 and (t1 > self.p or (self._miss_in_b2 and t1 == self.p))
        for where in (T1, T2) if prefer_t1 else (T2, T1):
            lst = self._lists[where]
            if lst:
                key, _ = lst.popitem(last=False)
                return key, where
        return None

    def _put_back(self, key: bytes, slot: str) -> None:
        lst = self._lists[slot]
        lst[key] = None
        lst.move_to_end(key, last=False)

    def _detach(self, key: bytes) -> str:
        where = self._home[key]
        del self._lists[where][key]
        return where

    def _gone(self, key: bytes, slot: str, evicted: bool) -> None:
        self._count[self._home.pop(key)] -= 1
        if evicted:
            (self._b1 if slot == T1 else self._b2)[key] = None
            self._trim_ghosts()

    def _trim_ghosts(self) -> None:
        c = self._cap()
        b1, b2 = self._b1, self._b2
        while b1 and self._count[T1] + len(b1) > c:
            b1.popitem(last=False)
        while (b1 or b2) and len(self._home) + len(b1) + len(b2) > 2 * c:
            (b2 if b2 else b1).popitem(last=False)

    def __len__(self) -> int:
        return len(self._home)

    def __contains__(self, key: bytes) -> bool:
        return key in self._home
