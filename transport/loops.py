"""Event loops: uvloop where it is installed (the daemon's loop, the client's I/O thread).

uvloop runs the same asyncio code with a faster loop (libuv): fewer
microseconds per wake-up and per socket call on the daemon's control path.
``KVSTORE_UVLOOP=0`` keeps the standard loop. A loop that serves ucx keeps the
standard loop too: ucxx's asyncio integration is built and tested against it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def loop_factory(ucx: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop: ``uvloop.new_event_loop`` when it can, else asyncio's."""
    if ucx or os.environ.get("KVSTORE_UVLOOP", "1") == "0":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
