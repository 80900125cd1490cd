"""Promoter: the thread that copies SSD hits back into the CPU tier after a get.

A get that read blocks from the SSD hands them (with their bytes) to
``submit``; the thread calls ``promote`` for each, which takes the store lock
and installs the block in the CPU arena if it still wants it. The get itself
never waits for a promotion.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kvstore.store")


@dataclass(frozen=True)
class Promotion:
    fp: bytes
    key: bytes
    state: Any  # the BlockState read (promote only if the block is still this one)
    data: bytes


class Promoter:
    def __init__(self, promote: Callable[[Promotion], None]):
        self._promote = promote
        self._queue: queue.SimpleQueue[Promotion | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="kvstore-promote", daemon=True)
        self._thread.start()

    def submit(self, item: Promotion) -> None:
        self._queue.put(item)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._promote(item)
            except Exception:  # pragma: no cover - never let the thread die
                log.exception("promotion failed")

    def close(self) -> None:
        """Stop after the promotions already submitted (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
