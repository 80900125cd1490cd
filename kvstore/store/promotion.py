"""Promoter: the thread that brings SSD hits back into the CPU tier after a read.

A read served from the SSD (straight into the caller's buffer) hands its
blocks to ``submit_many`` and returns; the thread takes what has queued up
(up to ``BATCH`` promotions) and calls ``promote_many`` with the lot: slots
allocated under the store lock, filled without it (the reader's own copy of
the bytes, or one batched SSD read), installed under it. The read itself
never waits for a promotion, and a promotion never holds the store lock
while it copies or reads.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kvstore.store")
BATCH = 64  # promotions handed to one ``promote_many`` call at most


@dataclass(frozen=True)
class Promotion:
    fp: bytes
    key: bytes
    state: Any  # the BlockState read (promote only if the block is still this one)
    data: Any = None  # the block's bytes when the reader kept a copy; None: read the SSD


class Promoter:
    def __init__(self, promote_many: Callable[[list[Promotion]], int]):
        self._promote_many = promote_many
        self._queue: queue.SimpleQueue[Promotion | None] = queue.SimpleQueue()
        self.handled = 0  # promotions taken off the queue and tried (installed or not)
        self._thread = threading.Thread(target=self._loop, name="kvstore-promote", daemon=True)
        self._thread.start()

    def submit(self, item: Promotion) -> None:
        self._queue.put(item)

    def submit_many(self, items: list[Promotion]) -> None:
        for item in items:
            self._queue.put(item)

    def _loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._promote_many(batch)
            except Exception:  # pragma: no cover - never let the thread die
                log.exception("promotion failed")
            self.handled += len(batch)

    def close(self) -> None:
        """Stop after the promotions already submitted (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
