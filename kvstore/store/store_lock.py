"""StoreLock: the store's one lock, taken once per call on the hot path.

A put, a get, a read lease each need the store's metadata twice: once to
plan (match, pin the path, allocate) and once to finish (commit, unlock the
path, count the hits). The copy in between runs without the lock. The
finishing step of a call never has to be seen by the caller at once, only by
the next one that looks at the metadata, so the call hands it to ``defer``
instead of taking the lock a second time: whoever next takes the lock runs
the deferred steps first, in order, before it looks at anything::

    put:  with lock: plan + allocate      copy (no lock)     lock.defer(commit)
    next caller:  with lock: [commit runs here]  ...its own work...

Every reader of the metadata takes the lock, so it always sees every finished
step before its own. Deferred steps run only at the outermost acquisition (a
nested ``with`` never runs them mid-operation). A deferred step that raises is
logged and skipped (the steps deferred are bookkeeping that cannot fail on a
consistent store).

``on_release`` hooks run when the outermost holder lets go, still under the
lock, and before a ``Condition.wait`` on it: the SSD write-back hands the jobs
queued under the lock to its workers there, as one batch.

``acquisitions()`` counts the calling thread's ``acquire`` calls (nested ones
too): the unit tests hold the hot path to one per call with it, whatever the
store's own threads (write-back, promotion, write-behind) take meanwhile. It is re-entrant, and works under
``threading.Condition``.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("kvstore.store")


class StoreLock:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed by the owner only
        self._deferred: collections.deque[Callable[[], None]] = collections.deque()
        self._on_release: list[Callable[[], None]] = []
        self._counts = threading.local()

    # -- the lock -------------------------------------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        counts = self._counts
        counts.n = getattr(counts, "n", 0) + 1
        self._depth += 1
        if self._depth == 1 and self._deferred:
            self._drain()
        return True

    def release(self) -> None:
        if self._depth == 1:
            self._released()
        self._depth -= 1
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    def acquisitions(self) -> int:
        """How many times the calling thread has acquired the lock."""
        return getattr(self._counts, "n", 0)

    # -- deferred work ------------------------------------------------------------------
    def defer(self, step: Callable[[], None]) -> None:
        """Run ``step`` under the lock before the next holder's own work (any thread)."""
        self._deferred.append(step)

    def soon(self, step: Callable[[], None]) -> None:
        """Run ``step`` now when this thread holds the lock, else ``defer`` it."""
        if self._lock._is_owned():
            step()
        else:
            self._deferred.append(step)

    def drain(self) -> None:
        """Run the deferred steps now (under the lock)."""
        with self:
            self._drain()

    def _drain(self) -> None:
        deferred = self._deferred
        while deferred:
            step = deferred.popleft()
            try:
                step()
            except Exception:  # pragma: no cover - bookkeeping on a consistent store
                log.exception("a deferred store step failed")

    def on_release(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (under the lock) whenever the outermost holder lets go."""
        self._on_release.append(hook)

    def _released(self) -> None:
        for hook in self._on_release:
            hook()

    # -- threading.Condition support ------------------------------------------------------
    def _is_owned(self) -> bool:
        return self._lock._is_owned()

    def _release_save(self):
        self._released()
        depth, self._depth = self._depth, 0
        return depth, self._lock._release_save()

    def _acquire_restore(self, state) -> None:
        depth, inner = state
        self._lock._acquire_restore(inner)
        self._depth = depth
