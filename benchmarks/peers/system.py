"""The interface a system implements to run in a worker, and the round it runs.

A system owns its server processes and its client; the worker owns the
buffers (``Buffers``) and the clock. ``put``/``get``/``lookup`` are the timed
calls; everything else (starting servers, ``warm``, stamping, sentinel fills,
byte checks) is outside the clock.
"""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod

import numpy as np

from benchmarks.peers.workload import WARM_ROUND_BASE, Buffers, RoundResult, Workload


class NotInstalled(Exception):
    """The system's client library or server binary is missing: reported, never faked."""


class System(ABC):
    """One system under test, driven by a worker process (the untimed hooks do nothing by default)."""

    #: what each GET writes into (a kept buffer, a registered buffer, new ``bytes``)
    get_destination: str = ""
    #: what ``lookup`` asks (None: the system has no lookup)
    lookup_call: str | None = None
    #: a second GET that returns a new object (None: the system has none besides ``get``)
    get_alloc_call: str | None = None

    def __init__(self, w: Workload, bufs: Buffers):
        self.w, self.bufs = w, bufs

    @abstractmethod
    def start(self) -> dict:
        """Start servers, connect; returns facts for the report (versions, sizes)."""

    def warm(self) -> None:
        """Touch the store's memory once before timing (default: the warm-up round only)."""
        return None

    def prepare_put(self, round_id: int) -> None:
        """Untimed, before PUT: stage ``bufs.src`` where the system reads it (a registered buffer)."""
        return None

    def prepare_get(self, round_id: int) -> None:
        """Untimed, before GET: sentinel-fill a registered destination, wait until the PUT is visible."""
        return None

    def finish_get(self, round_id: int) -> None:
        """Untimed, after GET: copy a registered destination into ``bufs.dst`` for the check."""
        return None

    @abstractmethod
    def put(self, round_id: int) -> None:
        """Store ``bufs.src`` as ``w.blocks`` blocks under round ``round_id``'s keys."""

    @abstractmethod
    def get(self, round_id: int) -> None:
        """Read round ``round_id``'s blocks into ``bufs.dst`` (copying out of new objects counts)."""

    def get_alloc(self, round_id: int) -> np.ndarray:
        """Read round ``round_id``'s blocks into a new object; its bytes as a flat view."""
        raise NotImplementedError

    def lookup(self, round_id: int) -> bool:
        """Whether all of round ``round_id``'s blocks are stored (one call)."""
        raise NotImplementedError

    def after_lookup(self, round_id: int) -> None:
        """Untimed, after each lookup: release what it holds (LMCache's read locks)."""
        return None

    def close(self) -> None:
        """Stop what ``start`` started."""
        return None


def run_round(system: System, round_id: int) -> RoundResult:
    """One round: PUT, GET (checked byte for byte), ``lookup_calls`` lookups."""
    w, bufs = system.w, system.bufs
    bufs.stamp(round_id)
    system.prepare_put(round_id)
    t0 = time.perf_counter()
    system.put(round_id)
    put_s = time.perf_counter() - t0
    bufs.clear()
    system.prepare_get(round_id)
    t0 = time.perf_counter()
    system.get(round_id)
    get_s = time.perf_counter() - t0
    system.finish_get(round_id)
    bytes_ok = bufs.check()
    get_alloc_s = None
    if system.get_alloc_call is not None:
        t0 = time.perf_counter()
        got = system.get_alloc(round_id)
        get_alloc_s = time.perf_counter() - t0
        bytes_ok = bytes_ok and bool(np.array_equal(got, bufs.src))
        del got
    lookup_s, lookup_ok = None, True
    if system.lookup_call is not None:
        times = []
        for _ in range(w.lookup_calls):
            t0 = time.perf_counter()
            found = system.lookup(round_id)
            times.append(time.perf_counter() - t0)
            system.after_lookup(round_id)
            lookup_ok = lookup_ok and found
        lookup_s = statistics.median(times)
    return RoundResult(put_s, get_s, get_alloc_s, lookup_s, bytes_ok, lookup_ok)


def warm_up(system: System) -> RoundResult:
    """``warm`` then one untimed round, so first-call costs stay out of the timed rounds."""
    system.warm()
    return run_round(system, WARM_ROUND_BASE)
