"""Event loops: uvloop where it is installed (the daemon's loop, the client's I/O thread).

uvloop runs the same asyncio code with a faster loop (libuv): fewer
microseconds per wake-up and per socket call on the daemon's control path.
``KVSTORE_UVLOOP=0`` keeps the standard loop. A loop that serves ucx keeps the
standard loop too: ucxx's asyncio integration is built and tested against it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(ucx: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop: ``uvloop.new_event_loop`` when it can, else asyncio's."""
    if ucx or os.environ.get("KVSTORE_UVLOOP", "1") == "0":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], ucx: bool = False) -> T:
    """``asyncio.run(main)`` on a loop from ``loop_factory(ucx)`` (the daemon's main)."""
    if sys.version_info < (3, 11):  # pragma: no cover - no Runner: the standard loop
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=loop_factory(ucx)) as runner:
        return runner.run(main)
