"""Event-driven progress of ucxx's worker on asyncio loops: no progress thread, no polling.

ucxx's defaults cost a core while idle. Its "thread" mode completes
requests on a C++ progress thread (waking every millisecond) and, without
Python futures, every ``await request.wait()`` is a ``sleep(0)`` loop: a
daemon with one idle ucx client spins on the receive of the next header.
Its Python futures bind every request to the first loop of the process (a
daemon thread beside a client loop breaks) and add a notifier thread hop;
its "blocking" mode never re-arms the worker after an event, so the event
fd stays readable and the loop spins as well.

``UcxProgress`` does the blocking mode as UCX describes it, for every loop
of the process that uses ucx:

* ucxx is initialised in "blocking" mode with this object standing in for
  ucxx's own per-loop progress task (registered in ucxx's table before
  ucxx would create its own), so nothing else progresses the worker;
* each loop watches the worker's event fd; a *pass* progresses the worker,
  resolves every finished request (its future, on the loop that posted it,
  via ``call_soon_threadsafe`` when that is another loop) and re-arms the
  worker, progressing again while arming reports pending events;
* a request posted through ``wait(request)`` schedules a pass on its loop
  (a send can need progress to leave), and a slow safety tick
  (``SAFETY_TICK_S``) covers progress made by ucxx's own code paths
  (connection handshakes, endpoint closes) that notify nobody.

An idle connection then costs nothing but that tick. If ucxx was already
initialised by someone else (another progress mode), or
``KVSTORE_UCX_PROGRESS=ucxx`` asks for ucxx's own progress (its
``UCXPY_PROGRESS_MODE``, "thread" by default: the behaviour before this
module, kept for comparison), ``wait`` falls back to ``request.wait()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)
SAFETY_TICK_S = 0.25
MAX_ARM_TRIES = 16  # progress/arm rounds in one pass before yielding to the loop


@dataclass
class _Pending:
    request: object  # ucxx UCXRequest
    buffer: object  # kept alive until UCX is done with it
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _LoopDriver:
    """One loop's half: its fd reader, its scheduled passes, its safety tick."""

    def __init__(self, progress: UcxProgress, loop: asyncio.AbstractEventLoop):
        self.progress = progress
        self.loop = loop
        self.scheduled = False
        self.fd: int | None = None
        self.timer: asyncio.TimerHandle | None = None

    def attach(self, worker) -> None:
        self.fd = worker.epoll_file_descriptor
        self.loop.add_reader(self.fd, self.run_pass)
        self.timer = self.loop.call_later(SAFETY_TICK_S, self._tick)
        self.kick()

    def kick(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run_pass)

    def _tick(self) -> None:
        self.run_pass()
        if not self.loop.is_closed():
            self.timer = self.loop.call_later(SAFETY_TICK_S, self._tick)

    def run_pass(self) -> None:
        self.scheduled = False
        if not self.progress.run_pass():
            self.kick()  # still busy after MAX_ARM_TRIES: let the loop breathe, then go on

    # ucxx's ProgressTask interface (it cancels these when the loop closes)
    @property
    def _tasks(self) -> tuple:
        return ()

    def detach(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.fd is not None and not self.loop.is_closed():
            try:
                self.loop.remove_reader(self.fd)
            except Exception:  # pragma: no cover - the loop is going away
                pass


class UcxProgress:
    """The process's ucx worker progressed from its loops' event fds (see the module doc)."""

    _instance: UcxProgress | None = None
    _lock = threading.Lock()

    def __init__(self, ucxx):
        self.ucxx = ucxx
        self.worker = None
        self.native = True  # False: ucxx was set up elsewhere, its own waits are used
        self.drivers: dict[asyncio.AbstractEventLoop, _LoopDriver] = {}
        self.pending: list[_Pending] = []
        self.pending_lock = threading.Lock()

    @classmethod
    def get(cls, ucxx) -> UcxProgress:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(ucxx)
            inst = cls._instance
        inst.ensure_loop(asyncio.get_running_loop())
        return inst

    # -- set-up ---------------------------------------------------------------
    def ensure_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure ``loop`` progresses the worker (call on that loop, before ucxx does)."""
        if loop in self.drivers or not self.native:
            return
        from ucxx import core
        from ucxx._lib_async import application_context as appctx

        if os.environ.get("KVSTORE_UCX_PROGRESS", "event") == "ucxx":
            log.info("KVSTORE_UCX_PROGRESS=ucxx: ucx waits use ucxx's own progress")
            self.native = False
            return
        if core._ctx is not None and self.worker is None:
            mode = core._ctx.progress_mode
            log.warning("ucxx was initialised elsewhere (progress mode %r): ucx waits use "
                        "ucxx's own progress", mode)
            self.native = False
            return
        driver = _LoopDriver(self, loop)
        with self._lock:
            # ucxx creates one progress task per loop unless the loop already has one
            appctx.ProgressTasks[loop] = driver
            self.drivers[loop] = driver
            if core._ctx is None:
                self.ucxx.init(progress_mode="blocking", enable_delayed_submission=False,
                               enable_python_future=False)
                self.worker = core._ctx.worker
                self.worker.init_blocking_progress_mode()
        driver.attach(self.worker)
        loop_close = loop.close

        def close(*args, **kwargs):  # forget the loop's half before the loop goes
            self.forget(loop)
            return loop_close(*args, **kwargs)

        loop.close = close

    def forget(self, loop: asyncio.AbstractEventLoop) -> None:
        from ucxx._lib_async import application_context as appctx

        with self._lock:
            driver = self.drivers.pop(loop, None)
            if appctx.ProgressTasks.get(loop) is driver:
                appctx.ProgressTasks.pop(loop, None)
        if driver is not None:
            driver.detach()

    # -- waiting ----------------------------------------------------------------
    def wait(self, request, buffer=None):
        """An awaitable finished when ``request`` is (its error raised from it)."""
        if not self.native:
            return request.wait()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if request.completed:
            _settle(fut, request)
            return fut
        with self.pending_lock:
            self.pending.append(_Pending(request, buffer, loop, fut))
        driver = self.drivers.get(loop)
        if driver is None:
            self.ensure_loop(loop)
            driver = self.drivers[loop]
        driver.kick()
        return fut

    def run_pass(self) -> bool:
        """Progress, resolve finished requests, re-arm; False if still busy."""
        worker = self.worker
        if worker is None:
            return True
        for _ in range(MAX_ARM_TRIES):
            worker.progress()
            self._resolve()
            if worker.arm():
                return True
        return False

    def _resolve(self) -> None:
        if not self.pending:
            return
        done, waiting = [], []
        with self.pending_lock:
            for p in self.pending:
                (done if p.request.completed else waiting).append(p)
            if not done:
                return
            self.pending = waiting
        me = _running_loop()
        for p in done:
            if p.loop is me:
                _settle(p.future, p.request)
            else:
                try:
                    p.loop.call_soon_threadsafe(_settle, p.future, p.request)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    pass


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(fut: asyncio.Future, request) -> None:
    if fut.done():
        return
    try:
        request.check_error()
    except BaseException as exc:  # noqa: BLE001 - handed to the waiter
        fut.set_exception(exc)
        return
    fut.set_result(None)
