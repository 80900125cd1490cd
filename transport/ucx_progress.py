"""One ucx worker per event loop, progressed from that loop's event fd: no polling, one thread.

Why not ucxx's own progress modes (measured in ``benchmarks.ucx_idle``,
``docs/concurrency.md``):

* "thread" (its default) progresses on a C++ thread, but without Python
  futures every ``await request.wait()`` is an ``asyncio.sleep(0)`` loop: a
  daemon with one idle client spins on the receive of the next header (about
  0.7–0.9 of a core);
* "thread" with Python futures idles, but each completion hops through a
  notifier thread (lookups 7 × tcp), and every future belongs to the first
  loop of the process (a second loop cannot await them);
* "blocking" never re-arms the worker after an event and still waits with
  ``sleep(0)`` (half a core idle).

``LoopWorker`` is UCX's blocking mode done as UCX describes it, with the
rules that keep it memory-safe:

* **one worker per loop, touched by one thread**: each loop that uses ucx
  gets its own ucxx ``ApplicationContext`` (a UCX context and worker) in
  "blocking" mode; only that loop's thread posts requests on it and
  progresses it (UCX workers are not thread-safe). Channels check that they
  are used on their loop; a close from elsewhere is handed to the loop;
* **progress on events**: the loop watches the worker's event fd; a *pass*
  progresses the worker, settles every finished request's future and
  re-arms the worker (progressing again while arming reports more events).
  Posting a request runs a pass at once (a send may need progress to leave;
  the worker is re-armed before the loop sleeps). A
  slow tick (``TICK_S``) drives ucxx's own waits (the connection handshake,
  which loop with ``sleep(0)`` and post nothing through here);
* **buffers outlive their requests**: a posted request keeps its buffer in
  the pending list until UCX reports it complete (done, failed or cancelled),
  whether or not anyone still awaits it: a cancelled waiter never frees
  memory UCX may still write into;
* **no polling by default**: ``KVSTORE_UCX_SPIN_US`` polls that long after
  each posted request before sleeping on the fd (faster on spare cores,
  slower on a loaded machine: see ``docs/concurrency.md``);
* **teardown on the loop's close**: endpoints are aborted, the worker is
  progressed until every pending request completed, then the fd reader goes.
  Requests that still do not complete keep their buffers for the life of the
  process (a leak, logged, never a write into freed memory).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)
TICK_S = 0.02
SPIN_S = float(os.environ.get("KVSTORE_UCX_SPIN_US", "0")) * 1e-6
MAX_ARM_TRIES = 16  # progress/arm rounds in one pass before yielding to the loop
TEARDOWN_S = 5.0
_LEAKED: list = []  # buffers of requests that never completed at teardown: never freed


@dataclass
class _Pending:
    request: object  # ucxx UCXRequest
    buffer: object  # kept alive until UCX is done with it
    future: asyncio.Future


def _context_class():
    """ucxx's ApplicationContext without its own per-loop progress tasks (ours drives it)."""
    from ucxx._lib_async.application_context import ApplicationContext

    class LoopContext(ApplicationContext):
        def continuous_ucx_progress(self, event_loop=None):
            return None  # progressed by LoopWorker, never by ucxx's tasks

    return LoopContext


class LoopWorker:
    """A ucxx context + worker owned by one event loop (see the module doc)."""

    _registry: dict[asyncio.AbstractEventLoop, LoopWorker] = {}
    _lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        from kvstore.transport.ucx import import_ucxx

        import_ucxx()
        self.loop = loop
        self.thread_id = threading.get_ident()
        self.ctx = _context_class()(progress_mode="blocking", enable_delayed_submission=False,
                                    enable_python_future=False)
        self.worker = self.ctx.worker
        self.worker.init_blocking_progress_mode()
        self.fd = self.worker.epoll_file_descriptor
        self.pending: list[_Pending] = []
        # held (not weakly) until aborted here: a ucxx Endpoint freed by the garbage
        # collector closes itself, progressing the worker from whatever thread collects it
        self.endpoints: set = set()
        self.scheduled = False
        self.closed = False
        self.spin_until = 0.0
        loop.add_reader(self.fd, self.run_pass)
        self.timer = loop.call_later(TICK_S, self._tick)
        self._hook_close()
        self.kick()

    # -- the registry ---------------------------------------------------------
    @classmethod
    def current(cls) -> LoopWorker:
        """The running loop's worker, made on first use (call on that loop)."""
        loop = asyncio.get_running_loop()
        with cls._lock:
            inst = cls._registry.get(loop)
        if inst is None or inst.closed:
            inst = cls(loop)
            with cls._lock:
                cls._registry[loop] = inst
        return inst

    def _hook_close(self) -> None:
        loop, loop_close = self.loop, self.loop.close

        def close(*args, **kwargs):  # the worker goes before the loop does
            self.teardown()
            return loop_close(*args, **kwargs)

        loop.close = close

    # -- progress -------------------------------------------------------------
    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def kick(self) -> None:
        if not self.scheduled and not self.closed:
            self.scheduled = True
            self.loop.call_soon(self.run_pass)

    def _tick(self) -> None:
        if self.closed:
            return
        self.run_pass()
        self.timer = self.loop.call_later(TICK_S, self._tick)

    def run_pass(self) -> None:
        """Progress, settle finished requests, re-arm; busy after MAX_ARM_TRIES: pass again soon."""
        self.scheduled = False
        if self.closed:
            return
        worker = self.worker
        if self.pending and time.perf_counter() < self.spin_until:
            worker.progress()  # a reply is due soon: poll instead of sleeping on the fd
            self._settle_finished()
            self.kick()
            return
        for _ in range(MAX_ARM_TRIES):
            worker.progress()
            self._settle_finished()
            if worker.arm():
                return
        self.kick()

    def _settle_finished(self) -> None:
        if not self.pending:
            return
        waiting = []
        for p in self.pending:
            if p.request.completed:
                _settle(p.future, p.request)
            else:
                waiting.append(p)
        self.pending = waiting

    # -- requests -------------------------------------------------------------
    def wait(self, request, buffer) -> asyncio.Future:
        """A future settled when ``request`` completes; ``buffer`` lives at least that long."""
        fut = self.loop.create_future()
        if request.completed:
            _settle(fut, request)
            return fut
        self.pending.append(_Pending(request, buffer, fut))
        self.spin_until = time.perf_counter() + SPIN_S
        # a pass right here: most sends leave, and many receives land, in its progress;
        # it settles what finished (this request too) and re-arms the worker, so the
        # loop sleeps on the event fd without another iteration first
        self.run_pass()
        return fut

    def track(self, endpoint) -> None:
        self.endpoints.add(endpoint)

    def abort(self, endpoint) -> None:
        """Abort ``endpoint`` (on this loop's thread, or after the loop is gone) and let it go."""
        abort_endpoint(endpoint)
        self.endpoints.discard(endpoint)
        self.kick()  # its cancelled requests complete on the next pass

    # -- teardown -------------------------------------------------------------
    def teardown(self) -> None:
        """Abort every endpoint, progress until every request completed, stop watching the fd."""
        if self.closed:
            return
        with LoopWorker._lock:
            if LoopWorker._registry.get(self.loop) is self:
                del LoopWorker._registry[self.loop]
        for ep in list(self.endpoints):
            abort_endpoint(ep)
        self.endpoints.clear()
        deadline = time.monotonic() + TEARDOWN_S
        while self.pending and time.monotonic() < deadline:
            self.worker.progress()
            self._settle_finished()
        if self.pending:
            log.warning("%d ucx requests did not complete at teardown: their buffers are kept",
                        len(self.pending))
            _LEAKED.extend(p.buffer for p in self.pending)
        self.closed = True
        self.timer.cancel()
        try:
            self.loop.remove_reader(self.fd)
        except Exception:  # pragma: no cover - the loop is going away
            pass


def abort_endpoint(ep) -> None:
    """Close a ucxx Endpoint now (its requests complete as cancelled on the next progress)."""
    try:
        ep.abort()
    except Exception:  # pragma: no cover - already gone
        pass


def _settle(fut: asyncio.Future, request) -> None:
    if fut.done():  # its waiter was cancelled; the request (and its buffer) are done now
        return
    try:
        request.check_error()
    except BaseException as exc:  # noqa: BLE001 - handed to the waiter
        fut.set_exception(exc)
        return
    fut.set_result(None)
