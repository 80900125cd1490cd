"""PreHello: the connections that have not said hello yet, kept apart from everyone else's.

A connection is *pre-hello* from accept until its hello is accepted. Such
connections cannot exhaust what authenticated clients need:

* their own cap (``Limits.max_pre_hello_connections``): a new connection
  past it pushes the *oldest* pre-hello connection out (a flood of silent
  sockets keeps cycling out; a real client, which says hello at once, gets
  in). They do not count against ``max_connections``, which is checked when
  the hello is accepted;
* their own small header limit and no payload (``Limits.before_hello``), so
  a declared 2 MiB header costs nothing;
* a deadline (``Limits.hello_seconds``) on the whole hello: a stalled client
  is dropped, logged at info level, and counted (``stalled``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

log = logging.getLogger("kvstore.transport.dispatch")


class PreHello:
    def __init__(self, cap: int):
        self.cap = cap
        self._waiting: OrderedDict[int, asyncio.Task] = OrderedDict()
        self.pushed_out = 0  # connections dropped to make room for newer ones
        self.pushed: set[int] = set()  # keys of those, until they have left

    def __len__(self) -> int:
        return len(self._waiting)

    def enter(self, key: int, task: asyncio.Task | None) -> None:
        """Admit a new connection; the oldest ones go when the cap is reached."""
        while self._waiting and len(self._waiting) >= max(1, self.cap):
            key_out, oldest = self._waiting.popitem(last=False)
            self.pushed_out += 1
            self.pushed.add(key_out)
            if oldest is not None:
                oldest.cancel()
        self._waiting[key] = task

    def leave(self, key: int) -> None:
        self._waiting.pop(key, None)
        self.pushed.discard(key)
