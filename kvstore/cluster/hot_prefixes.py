"""HotTracker: notice the prefixes that many requests hit (a shared system prompt).

Per routing key the tracker counts read hits in a sliding window and keeps
the tokens all those hits had in common (their longest common prefix, in
whole blocks). When the count reaches ``threshold`` within ``window``
seconds it reports a ``HotCandidate`` once: the node then marks the prefix
hot in etcd and pushes its common blocks to the replicas.

Bounded memory: at most ``max_keys`` routing keys are tracked (the least
recently hit is forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HotCandidate:
    route_hex: str
    common_tokens: np.ndarray  # the shared prefix (whole blocks)
    hits: int


class _Entry:
    __slots__ = ("times", "common", "reported")

    def __init__(self, tokens: np.ndarray):
        self.times: deque[float] = deque()
        self.common = tokens
        self.reported = False


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


class HotTracker:
    def __init__(self, threshold: int = 16, window: float = 60.0, max_keys: int = 4096):
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.window = window
        self.max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def record(self, route_hex: str, hit_tokens: np.ndarray, block_tokens: int,
               now: float | None = None) -> HotCandidate | None:
        """A read of ``route_hex`` hit ``hit_tokens``; a candidate when it just turned hot."""
        if not route_hex or len(hit_tokens) < block_tokens:
            return None
        now = time.monotonic() if now is None else now
        entry = self._entries.get(route_hex)
        if entry is None:
            entry = self._entries[route_hex] = _Entry(np.array(hit_tokens, copy=True))
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(route_hex)
            n = common_prefix_len(entry.common, hit_tokens)
            entry.common = entry.common[: n - n % block_tokens]
        entry.times.append(now)
        while entry.times and entry.times[0] < now - self.window:
            entry.times.popleft()
        if entry.reported or len(entry.times) < self.threshold or len(entry.common) == 0:
            return None
        entry.reported = True
        return HotCandidate(route_hex, entry.common, len(entry.times))

    def forget(self, route_hex: str) -> None:
        self._entries.pop(route_hex, None)
