"""Streams and events, device-agnostic: the one place the GPU path's ordering lives.

The GPU path moves KV blocks on a dedicated stream, ordered against the
engine's forward pass by events, and lets the host touch a lease (commit,
release) only once the copy that fills or drains it has completed. That
orchestration is written once, against :class:`Timeline`; two implementations
run it:

* :class:`CudaTimeline` (CUDA tensors): ``torch.cuda.Stream`` /
  ``torch.cuda.Event``; copies are ``copy_(non_blocking=True)`` on the stream
  (DMA when the host side is pinned or registered, see :mod:`.pinning`);
  ``after(event, fn)`` hands ``fn`` to one host thread that waits for the event
  and runs it, so the caller never blocks on a save.
* :class:`HostTimeline` (CPU tensors): the same calls, run synchronously in
  program order; every event has completed when it is recorded and
  ``after`` runs ``fn`` at once. With ``separate_memory=True`` it stands in
  for a device whose memory the host cannot address: callers then stage
  payloads in "device" tensors and cross with one counted copy, exactly as on
  a GPU, so a CPU test runs the GPU code path and checks its copies.

Both append to ``log`` (a bounded deque) one :class:`Op` per call, in the
order the host issued them: ``record`` (stream, event), ``wait`` (stream
waits for event), ``copy`` (stream, bytes), ``kernel`` (stream, what), and
``host`` (a callback of ``after`` starting, with the event it waited for).
Tests assert the ordering rules on that log (:func:`order_of`); the CUDA
implementation keeps it too, so a device check asserts the same rules on a
real GPU.

The ordering rules the users of a timeline follow (``kvstore.client.transfer``
documents them for the connector and the HF adapter):

* the transfer stream waits for an event recorded on the compute stream after
  the KV it reads was written (saves), and the compute stream waits for the
  transfer's event before it reads what a load wrote;
* a lease is committed or released only in an ``after`` callback of the
  event recorded after the last copy into or out of its slots.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

LOG_LENGTH = 4096


@dataclass(frozen=True)
class Op:
    """One logged operation: ``kind`` (record, wait, copy, kernel, host), the stream's
    name, the event's id (0: none), a label, and bytes moved (copies)."""

    kind: str
    stream: str
    event: int = 0
    label: str = ""
    nbytes: int = 0


@dataclass
class Event:
    """A point on a stream: ``id`` (unique per timeline), the stream it was recorded on."""

    id: int
    stream: str
    label: str = ""
    handle: object = field(default=None, repr=False)  # torch.cuda.Event on CUDA

    def done(self) -> bool:
        return self.handle is None or self.handle.query()

    def synchronize(self) -> None:
        if self.handle is not None:
            self.handle.synchronize()


@dataclass
class Stream:
    name: str
    handle: object = field(default=None, repr=False)  # torch.cuda.Stream on CUDA


class Timeline:
    """Streams, events and copies on one device (see the module docstring)."""

    separate_memory: bool = True
    device: torch.device

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.log: collections.deque[Op] = collections.deque(maxlen=LOG_LENGTH)
        self._ids = itertools.count(1)
        self._streams: dict[str, Stream] = {}
        self._lock = threading.Lock()

    # -- streams ------------------------------------------------------------
    def compute(self) -> Stream:
        """The stream the caller (the engine's forward) runs on now."""
        raise NotImplementedError

    def stream(self, name: str) -> Stream:
        """The dedicated stream ``name`` (created on first use)."""
        with self._lock:
            s = self._streams.get(name)
            if s is None:
                s = self._streams[name] = self._new_stream(name)
            return s

    def _new_stream(self, name: str) -> Stream:
        raise NotImplementedError

    @contextmanager
    def on(self, stream: Stream) -> Iterator[Stream]:
        """Kernels and allocations in the body run on ``stream``."""
        yield stream

    # -- events -------------------------------------------------------------
    def record(self, stream: Stream, label: str = "") -> Event:
        ev = Event(next(self._ids), stream.name, label, self._new_event(stream))
        self._note(Op("record", stream.name, ev.id, label))
        return ev

    def _new_event(self, stream: Stream):
        return None

    def wait(self, stream: Stream, event: Event | None, label: str = "") -> None:
        """Work enqueued on ``stream`` from now on starts after ``event`` (None: nothing)."""
        if event is None:
            return
        self._note(Op("wait", stream.name, event.id, label or event.label))
        self._wait(stream, event)

    def _wait(self, stream: Stream, event: Event) -> None:
        pass

    def kernel(self, stream: Stream, label: str) -> None:
        """Note that a kernel (a pack or an unpack) is enqueued on ``stream`` now."""
        self._note(Op("kernel", stream.name, 0, label))

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: Stream, label: str = "") -> None:
        """``dst.copy_(src)`` on ``stream``, asynchronous where the hardware allows."""
        self._note(Op("copy", stream.name, 0, label, src.numel() * src.element_size()))
        with self.on(stream):
            dst.copy_(src, non_blocking=True)

    def empty(self, shape, dtype: torch.dtype, stream: Stream) -> torch.Tensor:
        """A device buffer used on ``stream`` (staging of payloads)."""
        with self.on(stream):
            return torch.empty(shape, dtype=dtype, device=self.device)

    def after(self, event: Event, fn: Callable[[], object], label: str = "") -> None:
        """Run ``fn`` on the host once ``event`` has completed, without blocking the caller."""
        raise NotImplementedError

    def when_done(self, event: Event, fn: Callable[[], object], label: str = "",
                  wait: bool = False):
        """``after(event, fn)``; with ``wait`` the caller blocks until ``event`` completed and
        runs ``fn`` itself (its exceptions reach the caller: the synchronous APIs)."""
        if not wait:
            return self.after(event, fn, label)
        event.synchronize()
        return self._run_after(event, fn, label)

    def drain(self) -> None:
        """Return once every ``after`` callback handed over so far has run."""

    def close(self) -> None:
        self.drain()

    def _note(self, op: Op) -> None:
        with self._lock:
            self.log.append(op)

    def _run_after(self, event: Event, fn: Callable[[], object], label: str) -> None:
        self._note(Op("host", "host", event.id, label))
        return fn()


class HostTimeline(Timeline):
    """CPU tensors: everything runs now, in the order it is issued.

    ``defer=True`` (tests) holds ``after`` callbacks until ``drain()``, as the CUDA
    host thread would while the copies are in flight: a test then sees what the
    store looks like before a save or a lease release has happened.
    """

    def __init__(self, device="cpu", separate_memory: bool = False, defer: bool = False) -> None:
        super().__init__(device)
        self.separate_memory = separate_memory
        self.defer = defer
        self._deferred: list[tuple[Event, Callable[[], object], str]] = []

    def compute(self) -> Stream:
        return self.stream("compute")

    def _new_stream(self, name: str) -> Stream:
        return Stream(name)

    def after(self, event: Event, fn: Callable[[], object], label: str = "") -> None:
        if self.defer:
            self._deferred.append((event, fn, label))
        else:
            self._run_after(event, fn, label)

    @property
    def pending(self) -> int:
        return len(self._deferred)

    def drain(self) -> None:
        while self._deferred:
            event, fn, label = self._deferred.pop(0)
            self._run_after(event, fn, label)


class CudaTimeline(Timeline):
    """One CUDA device: torch streams and events, one host thread for ``after``."""

    separate_memory = True

    def __init__(self, device) -> None:
        super().__init__(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._pending: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._outstanding = 0

    def compute(self) -> Stream:
        s = torch.cuda.current_stream(self.device)
        return Stream(f"compute:{s.cuda_stream:x}", s)

    def _new_stream(self, name: str) -> Stream:
        return Stream(name, torch.cuda.Stream(self.device))

    @contextmanager
    def on(self, stream: Stream) -> Iterator[Stream]:
        with torch.cuda.device(self.device), torch.cuda.stream(stream.handle):
            yield stream

    def _new_event(self, stream: Stream):
        ev = torch.cuda.Event()
        ev.record(stream.handle)
        return ev

    def _wait(self, stream: Stream, event: Event) -> None:
        stream.handle.wait_event(event.handle)

    def after(self, event: Event, fn: Callable[[], object], label: str = "") -> None:
        with self._idle:
            self._outstanding += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="kvstore-after",
                                                daemon=True)
                self._thread.start()
        self._pending.put((event, fn, label))

    def _serve(self) -> None:
        while True:
            event, fn, label = self._pending.get()
            try:
                event.synchronize()
                self._run_after(event, fn, label)
            except Exception:  # a failed commit is a lost save, never a dead thread
                import logging

                logging.getLogger(__name__).warning("kvstore: %s failed", label, exc_info=True)
            finally:
                with self._idle:
                    self._outstanding -= 1
                    self._idle.notify_all()

    def drain(self) -> None:
        with self._idle:
            while self._outstanding:
                self._idle.wait()


def timeline_for(device) -> Timeline:
    """The timeline of tensors on ``device``: CUDA for a CUDA device, else the host one."""
    device = torch.device(device)
    if device.type == "cuda":
        return CudaTimeline(device)
    return HostTimeline(device)


_SHARED: dict[str, Timeline] = {}
_SHARED_LOCK = threading.Lock()


def shared(device) -> Timeline:
    """The process's timeline of ``device`` (one dedicated stream per device, shared by
    every caller that brings no timeline of its own)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    with _SHARED_LOCK:
        tl = _SHARED.get(key)
        if tl is None:
            tl = _SHARED[key] = timeline_for(device)
        return tl


def order_of(log, *matchers) -> list[int]:
    """Positions in ``log`` of the first op matching each matcher, in turn, each after
    the previous (``-1`` once one is missing). A matcher is a dict of ``Op`` fields
    (``label`` matches a prefix)."""
    ops, pos, out = list(log), 0, []
    for m in matchers:
        found = -1
        for i in range(pos, len(ops)):
            op = ops[i]
            if all((getattr(op, k).startswith(v) if k == "label" else getattr(op, k) == v)
                   for k, v in m.items()):
                found = i
                break
        out.append(found)
        if found < 0:
            return out + [-1] * (len(matchers) - len(out))
        pos = found + 1
    return out
