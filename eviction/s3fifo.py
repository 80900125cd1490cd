"""S3-FIFO (Yang et al., SOSP'23): small, main and ghost FIFO queues.

* New blocks enter the small queue S (10% of the capacity); a block whose key
  is still in the ghost queue G goes straight to the main queue M.
* A hit increments the block's 2-bit counter ``freq`` (capped at 3).
* Evicting from S: the oldest block moves to M (counter cleared) when it was
  hit at least ``move_to_main`` times (2, as in the paper's SOSP artifact),
  otherwise it is evicted and its key enters G. Most blocks are hit at most
  once ("one-hit wonders") and leave through S quickly.
* Evicting from M: FIFO with reinsertion; the oldest block with ``freq > 0``
  is reinserted at the head with ``freq - 1``, the first with 0 goes.
* M is evicted from when it holds more than its 90% share or S is empty.
* G remembers as many keys as M may hold, in FIFO order.

Each step moves or evicts one block and counters are capped: amortised O(1).
A candidate the tier turns down goes back to the tail of its queue.
"""

from __future__ import annotations

from collections import OrderedDict

from kvstore.eviction.scan import ScanPolicy

SMALL, MAIN = "S", "M"


class S3FIFOPolicy(ScanPolicy):
    name = "s3fifo"

    def __init__(
        self, capacity: int | None = None, small_ratio: float = 0.1, move_to_main: int = 2
    ) -> None:
        super().__init__(capacity)
        if not 0 < small_ratio < 1:
            raise ValueError("small_ratio must lie in (0, 1)")
        self.small_ratio = small_ratio
        self.move_to_main = move_to_main
        self._queues = {SMALL: OrderedDict(), MAIN: OrderedDict()}  # oldest first
        self._home: dict[bytes, str] = {}  # every resident key -> its queue
        self._count = {SMALL: 0, MAIN: 0}  # resident keys per queue, parked/pending too
        self._freq: dict[bytes, int] = {}
        self._ghost: OrderedDict[bytes, None] = OrderedDict()

    def _small_target(self) -> int:
        return max(1, int(self._cap() * self.small_ratio))

    def _add(self, key: bytes, queue: str) -> None:
        self._home[key] = queue
        self._count[queue] += 1
        self._queues[queue][key] = None

    def on_insert(self, key: bytes) -> None:
        if key in self._home:
            self.on_access(key)
            return
        if key in self._ghost:
            del self._ghost[key]
            self._add(key, MAIN)
        else:
            self._add(key, SMALL)
        self._freq[key] = 0

    def on_access(self, key: bytes) -> None:
        if key in self._home:
            self._reactivate(key)
            self._freq[key] = min(self._freq[key] + 1, 3)

    def _pop(self) -> tuple[bytes, str] | None:
        small, main = self._queues[SMALL], self._queues[MAIN]
        main_target = self._cap() - self._small_target()
        while small or main:
            from_main = not small or (main and self._count[MAIN] > main_target)
            if not from_main:
                key = next(iter(small))
                del small[key]
                if self._freq[key] >= self.move_to_main:
                    self._count[SMALL] -= 1
                    self._add(key, MAIN)
                    self._freq[key] = 0
                    continue
                return key, SMALL
            key = next(iter(main))
            if self._freq[key] > 0:
                self._freq[key] -= 1
                main.move_to_end(key)
                continue
            del main[key]
            return key, MAIN
        return None

    def _put_back(self, key: bytes, slot: str) -> None:
        queue = self._queues[slot]
        queue[key] = None
        queue.move_to_end(key, last=False)

    def _detach(self, key: bytes) -> str:
        slot = self._home[key]
        del self._queues[slot][key]
        return slot

    def _gone(self, key: bytes, slot: str, evicted: bool) -> None:
        self._count[self._home.pop(key)] -= 1
        del self._freq[key]
        if evicted and slot == SMALL:
            self._ghost[key] = None
            limit = self._cap() - self._small_target()
            while len(self._ghost) > limit:
                self._ghost.popitem(last=False)

    def __len__(self) -> int:
        return len(self._home)

    def __contains__(self, key: bytes) -> bool:
        return key in self._home
