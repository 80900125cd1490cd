"""IOThread: the process's background asyncio loop for client connections.

It runs the ucx connections and the asyncio twins (``alookup``, ``aput``, ...)
of ``RemoteStore``; the synchronous calls over tcp and shm do not use it
(``transport.sync_connection``). Made again in a forked child.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading

from kvstore.transport.loops import loop_factory


class IOThread:
    """The process's background asyncio loop for client connections."""

    _instance: IOThread | None = None
    _lock = threading.Lock()

    def __init__(self):
        self.pid = os.getpid()
        self.loop = loop_factory()()
        self.thread = threading.Thread(target=self._run, name="kvstore-client-io", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> IOThread:
        with cls._lock:
            inst = cls._instance
            if inst is None or inst.pid != os.getpid() or not inst.thread.is_alive():
                inst = cls._instance = IOThread()
            return inst

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float | None = None):
        if threading.current_thread() is self.thread:
            raise RuntimeError("sync kvstore client call from its own I/O thread; use the a* twins")
        return self.submit(coro).result(timeout)

    @classmethod
    def shutdown(cls) -> None:
        """At exit: cancel what is in flight (a bulk transfer then unblocks its worker)."""
        inst = cls._instance
        if inst is None or inst.pid != os.getpid() or not inst.thread.is_alive():
            return

        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            inst.submit(cancel_all()).result(5)
        except Exception:  # pragma: no cover - exiting anyway
            pass
        inst.loop.call_soon_threadsafe(inst.loop.stop)


# Before the thread pools join their workers at exit (threading's exit hooks
# run before atexit's, the last registered first), so none waits on a socket.
try:
    threading._register_atexit(IOThread.shutdown)
except (AttributeError, RuntimeError):  # pragma: no cover - another Python
    atexit.register(IOThread.shutdown)
