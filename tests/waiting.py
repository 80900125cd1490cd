"""Waiting in tests: poll a condition with a deadline instead of sleeping a fixed window.

A test that sleeps "long enough" for a thread, a daemon or a peer to act is slow when
the machine is idle and flaky when it is loaded; ``wait_until`` returns as soon as the
condition holds and fails only after a generous deadline::

    assert wait_until(lambda: srv.dispatcher.connections == 0), "connections left open"

A sleep that is itself what a test exercises (a client that stalls on purpose, a TTL
that must run out, a kill at a random moment) stays a sleep, with a comment saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last truth.

    ``interval`` is the pause between polls, not a window the test relies on.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
    return True
