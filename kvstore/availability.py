"""The client's one soft-failure rule: an unreachable daemon is a cache miss unless strict.

A daemon that cannot be reached, does not answer in time or is draining
(``OFFLINE``) makes ``lookup`` return 0, ``get`` miss and ``put`` store
nothing: the engine recomputes, as it would on a miss. A strict caller gets
the error instead (``Unavailable``, ``Timeout`` or ``Draining``). Other
errors (a wrong layout, bad arguments) always raise.

Every client call that talks to a daemon goes through one ``SoftFailures``
(``RemoteStore``, ``ClusterBackend``, ``Namespace`` and its async twin): the
first failure of an outage is logged as a warning, the recovery once as info,
so a long outage does not flood the log. Layers nest (a ``Namespace`` over a
``RemoteStore``, each with its own ``SoftFailures``): a failure an inner layer
absorbed (and logged) is not a success of the outer one, nor logged again by
it (``_Call``, a context variable, carries that through one call), so an
outage is one warning and its end one info line. A client whose daemon has never
answered since it connected (a wrong URL, a daemon never started) says so in
one louder warning: the URL it tried, that every put is dropped and every get
misses, and where a plain ``kvstore serve`` listens.
"""

from __future__ import annotations

import contextvars
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


class _Call:
    """One ``SoftFailures.call`` in progress: did a failure get absorbed or reported in it?"""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "kvstore_soft_call", default=None)


def _enter() -> tuple[_Call, contextvars.Token]:
    return (call := _Call()), _current.set(call)


def _leave(call: _Call, token: contextvars.Token) -> bool:
    """End ``call``; True when a failure happened inside it (the enclosing call learns too)."""
    _current.reset(token)
    outer = _current.get()
    if call.failed and outer is not None:
        outer.failed = True
    return call.failed


class SoftFailures:
    """Applies the soft-failure rule to calls against one daemon (or cluster), ``what``."""

    def __init__(self, strict: bool, what: str, logger: logging.Logger = log):
        self.strict = strict
        self.what = what
        self.log = logger
        self._lock = threading.Lock()
        self._down = False
        self._answered_once = False  # the daemon answered at least once since this was made

    def call(self, fn: Callable[..., T], default: T, *args) -> T:
        """``fn(*args)``; ``default`` when it fails with an ``OFFLINE`` error and this is
        not strict. (``_enter`` and ``_leave`` written out: every sync call pays this.)"""
        outer = _current.get()
        call = _Call()
        token = _current.set(call)
        try:
            result = fn(*args)
        except OFFLINE as exc:
            return self.failed(exc, default)
        finally:
            _current.reset(token)
            if call.failed and outer is not None:
                outer.failed = True
        if not call.failed:  # a default an inner layer returned is not an answer
            self._answered_once = True
            if self._down:
                self.answered()
        return result

    async def acall(self, awaitable: Awaitable[T], default: T) -> T:
        """The asyncio twin of ``call``."""
        call, token = _enter()
        try:
            result = await awaitable
        except OFFLINE as exc:
            return self.failed(exc, default)
        finally:
            inner_failed = _leave(call, token)
        if not inner_failed:
            self.answered()
        return result

    def failed(self, exc: BaseException, default: T) -> T:
        """Raise ``exc`` when strict; otherwise log the outage once and return ``default``."""
        if self.strict:
            raise exc  # not absorbed here: whoever catches it reports it
        call = _current.get()
        reported = call is not None and call.failed  # an inner layer absorbed and logged it
        if call is not None:
            call.failed = True
        if reported:
            return default
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

    def report(self, exc: BaseException, action: str, logger: logging.Logger | None = None) -> None:
        """A failure the caller absorbs (a save dropped, a lookup answered 0), in one line.

        ``OFFLINE`` errors follow the outage rule above (one warning per outage,
        raised when strict); any other error is one warning line each time,
        ``kvstore: ACTION (Type: message)``, with the traceback only at DEBUG.
        """
        if isinstance(exc, OFFLINE):
            self.failed(exc, None)
            return
        out = logger or self.log
        out.warning("kvstore: %s (%s: %s)", action, type(exc).__name__, exc,
                    exc_info=exc if out.isEnabledFor(logging.DEBUG) else None)

    def answered(self) -> None:
        """The daemon answered: log the recovery if an outage was logged."""
        self._answered_once = True
        if self._down:
            with self._lock:
                recovered, self._down = self._down, False
            if recovered:
                self.log.info("kvstore daemon at %s reachable again", self.what)
