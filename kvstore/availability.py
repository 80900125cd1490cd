"""The client's one soft-failure rule: an unreachable daemon is a cache miss unless strict.

A daemon that cannot be reached, does not answer in time or is draining
(``OFFLINE``) makes ``lookup`` return 0, ``get`` miss and ``put`` store
nothing: the engine recomputes, as it would on a miss. A strict caller gets
the error instead (``Unavailable``, ``Timeout`` or ``Draining``). Other
errors (a wrong layout, bad arguments) always raise.

Every client call that talks to a daemon goes through one ``SoftFailures``
(``RemoteStore``, ``ClusterBackend``, ``Namespace`` and its async twin): the
first failure of an outage is logged as a warning, the recovery once as info,
so a long outage does not flood the log. A client whose daemon has never
answered since it connected (a wrong URL, a daemon never started) says so in
one louder warning: the URL it tried, that every put is dropped and every get
misses, and where a plain ``kvstore serve`` listens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from kvstore.default_listen import default_listen
from kvstore.errors import Draining, Timeout, Unavailable

OFFLINE = (Unavailable, Timeout, Draining)
"""The errors that mean "the daemon is not serving now" (a miss unless strict)."""

T = TypeVar("T")
log = logging.getLogger("kvstore.client")
_never_reached: set[str] = set()  # daemons already named in the loud warning, this process
_never_reached_lock = threading.Lock()


def _first_to_report(what: str) -> bool:
    """True once per ``what`` and process: a client and the store under it warn once."""
    with _never_reached_lock:
        first = what not in _never_reached
        _never_reached.add(what)
    return first


class SoftFailures:
    """Applies the soft-failure rule to calls against one daemon (or cluster), ``what``."""

    def __init__(self, strict: bool, what: str, logger: logging.Logger = log):
        self.strict = strict
        self.what = what
        self.log = logger
        self._lock = threading.Lock()
        self._down = False
        self._answered_once = False  # the daemon answered at least once since this was made

    def call(self, fn: Callable[[], T], default: T) -> T:
        """``fn()``; ``default`` when it fails with an ``OFFLINE`` error and this is not strict."""
        try:
            result = fn()
        except OFFLINE as exc:
            return self.failed(exc, default)
        self.answered()
        return result

    async def acall(self, awaitable: Awaitable[T], default: T) -> T:
        """The asyncio twin of ``call``."""
        try:
            result = await awaitable
        except OFFLINE as exc:
            return self.failed(exc, default)
        self.answered()
        return result

    def failed(self, exc: BaseException, default: T) -> T:
        """Raise ``exc`` when strict; otherwise log the outage once and return ``default``."""
        if self.strict:
            raise exc
        with self._lock:
            first, self._down = not self._down, True
        if first and not self._answered_once:
            if not _first_to_report(self.what):
                return default
            self.log.warning(
                "kvstore: no daemon has answered at %s since this client connected (%s): every "
                "put is dropped and every get misses until one does. Start one with `kvstore "
                "serve` (it logs the URLs it listens on; with no settings: %s) or connect to "
                "the URL it prints", self.what, exc, " and ".join(default_listen()))
        elif first:
            self.log.warning("kvstore daemon at %s unavailable (%s); treating as a miss",
                             self.what, exc)
        return default

    def answered(self) -> None:
        """The daemon answered: log the recovery if an outage was logged."""
        self._answered_once = True
        if self._down:
            with self._lock:
                recovered, self._down = self._down, False
            if recovered:
                self.log.info("kvstore daemon at %s reachable again", self.what)
