"""Server: the daemon's carriers around one dispatcher, started and drained together.

``Server`` runs on an asyncio loop (the daemon's main thread); ``ServerThread``
runs one on a background thread (tests, benchmarks, an embedding process).
Draining stops the listeners, lets the requests in flight finish (later ones
are refused with DRAINING), then closes every connection; the caller then
flushes and closes the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from kvstore.transport.auth import TokenAuth
from kvstore.transport.dispatch import Dispatcher
from kvstore.transport.limits import Limits
from kvstore.transport.peer_credentials import UidAllowList
from kvstore.transport.shm import ShmListener
from kvstore.transport.tcp import TcpListener
from kvstore.transport.ucx import UcxListener
from kvstore.transport.urls import CarrierURL, parse_url

log = logging.getLogger(__name__)


LISTENERS = {"tcp": TcpListener, "shm": ShmListener, "ucx": UcxListener}


def make_listener(server, url: CarrierURL):
    return LISTENERS[url.scheme](server, url)


class Server:
    def __init__(
        self,
        store,
        listen: list[str],
        limits: Limits | None = None,
        auth: TokenAuth | None = None,
        threads: int = 4,
        name: str = "kvstore",
        shm_allow_uids=None,
    ):
        self.store = store
        self.shm_allow = UidAllowList.parse(shm_allow_uids)  # who may use the shm carrier
        self.listen = list(listen)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kvstore-io")
        self.dispatcher = Dispatcher(store, limits, auth, server_name=name, executor=self.executor)
        self.listeners: list = []
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        try:
            for url in self.listen:
                listener = make_listener(self, parse_url(url))
                await listener.start()
                self.listeners.append(listener)
        except BaseException:
            await self.close_listeners()
            raise

    @property
    def urls(self) -> list[str]:
        return [listener.url for listener in self.listeners]

    async def close_listeners(self) -> None:
        for listener in self.listeners:
            try:
                await listener.close()
            except Exception:  # pragma: no cover
                log.exception("closing %s failed", listener.url)
        self.listeners = []

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish the requests in flight, close every connection."""
        await self.close_listeners()
        self.dispatcher.draining = True
        try:
            await asyncio.wait_for(self.dispatcher.wait_idle(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d requests still running after %.1fs; closing anyway",
                        self.dispatcher.inflight, timeout)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)


class ServerThread:
    """A Server on its own event-loop thread: ``with ServerThread(store, urls) as s: s.urls``."""

    def __init__(self, store, listen: list[str], **kwargs):
        self.server = Server(store, listen, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kvstore-server", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self.loop.close()
            raise self._error
        return self

    @property
    def urls(self) -> list[str]:
        return self.server.urls

    @property
    def dispatcher(self) -> Dispatcher:
        return self.server.dispatcher

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop and return its result."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.drain(timeout), self.loop)
        try:
            fut.result(timeout + 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout + 5)
            if not self._thread.is_alive():
                self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
