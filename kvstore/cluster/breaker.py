"""Breaker: a per-peer circuit breaker (clients and nodes alike).

A peer that failed (timed out, refused, reset) is *open*: requests skip it
and go to the next node of the ranking, at no cost. It stays open until a
background probe (``due()`` lists the peers to probe, ``probed()`` records
the outcome) gets an answer; the time between probes doubles on each
failure in a row, from ``base`` to ``cap`` seconds. A success closes it.
So a silent node costs one deadline, once, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Breaker:
    def __init__(self, base: float = 0.25, cap: float = 8.0,
                 clock: Callable[[], float] = time.monotonic):
        self.base, self.cap, self.clock = base, cap, clock
        self._open: dict[str, tuple[float, float]] = {}  # peer -> (next probe at, backoff)
        self._lock = threading.Lock()
        self.opened = 0  # times a peer was opened (counters, tests)

    def allows(self, peer: str) -> bool:
        return peer not in self._open

    def is_open(self, peer: str) -> bool:
        return peer in self._open

    def failed(self, peer: str) -> float:
        """Open ``peer`` (or keep it open with a longer backoff); returns the backoff."""
        with self._lock:
            _, backoff = self._open.get(peer, (0.0, 0.0))
            if backoff == 0.0:
                self.opened += 1
            backoff = min(self.cap, backoff * 2) if backoff else self.base
            self._open[peer] = (self.clock() + backoff, backoff)
            return backoff

    def succeeded(self, peer: str) -> None:
        with self._lock:
            self._open.pop(peer, None)

    def due(self) -> list[str]:
        """Open peers whose next probe is due."""
        now = self.clock()
        with self._lock:
            return [p for p, (at, _) in self._open.items() if at <= now]

    def probed(self, peer: str, ok: bool) -> None:
        if ok:
            self.succeeded(peer)
        elif peer in self._open:
            self.failed(peer)

    def forget(self, keep) -> None:
        """Drop the peers not in ``keep`` (they left the cluster)."""
        with self._lock:
            for peer in [p for p in self._open if p not in keep]:
                del self._open[peer]

    def open_peers(self) -> list[str]:
        return list(self._open)
