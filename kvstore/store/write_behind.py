"""WriteBehind: every put reaches the SSD tier within a bounded lag, so a crash leaves the cache warm.

Without it, blocks reach the SSD only when evicted from memory or on a
graceful stop: a SIGKILL loses the whole CPU tier. Every ``seconds`` (the
store's ``write_behind_seconds``, on by default with an SSD tier) this
thread asks the store to queue an SSD write of every dirty resident block
(``WriteBackReports.write_dirty``: each pinned until written, in one batch to
the write-back workers through ``SSDTier.write_many``). A block is then on
disk about ``seconds`` plus the write time after its put; a SIGKILL loses
at most that. The same tick takes back write leases past their deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("kvstore.store")


class WriteBehind:
    def __init__(self, seconds: float, tick: Callable[[], None]):
        self.seconds = seconds
        self._tick = tick
        self._stop = threading.Event()
        self.ticks = 0
        self._thread = threading.Thread(target=self._run, name="kvstore-write-behind",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self._tick()
                self.ticks += 1
            except Exception:  # pragma: no cover - the thread must not die
                log.exception("write-behind tick failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
