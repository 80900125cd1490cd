"""The ucx carrier (ucxx): the same frames as tagged messages, payloads from/into arena memory.

UCX delivers whole messages, not a byte stream, so a frame travels as:

* one message holding the 4-byte prefix and the header when they fit in
  ``INLINE`` bytes (every control message does), else the prefix alone
  followed by the header as a second message (the receiver knows which from
  the prefix);
* one message per payload segment, of exactly its declared size, sent from
  and received into the final memory (arena slots on the daemon, the
  caller's buffer on the client). All the segments of a frame are posted at
  once so UCX pipelines them (rendezvous for large ones).

The receiver posts a buffer of the size it expects: a longer message fails
with a truncation error (the connection is closed) instead of growing
anything, so the limits hold before any allocation here too.

Progress: each event loop that uses ucx owns one ucx worker, progressed
from that worker's event fd on the loop's own thread
(``transport/ucx_progress.py``): an idle connection costs nothing, no
thread but the loop's ever touches the worker, and a posted buffer stays
alive until UCX reports its request complete. A channel is used only on the
loop that opened it (the daemon's loop, the client's I/O thread, an asyncio
twin's loop); its ``close`` may come from any thread.

Environment: ``ucxx`` reads ``UCX_*`` variables at import; ``ucx_env_defaults``
silences UCX's unused-variable warning and sets ``UCX_TCP_CM_REUSEADDR=y`` (a
restarted daemon rebinds its port) unless they are set already. On a machine without a GPU the
default transports (tcp, shared memory, cma) work over loopback; set
``UCX_TLS`` to choose. ucxx's listener binds every interface (it takes a port,
no address), so it cannot honour ``ucx://HOST:PORT`` for a specific host:
such a listener is refused at start unless the host is a wildcard
(``ucx://0.0.0.0:PORT``, ``ucx://[::]:PORT``: every interface, said
explicitly) or the operator accepts every interface with
``KVSTORE_UCX_ANY_INTERFACE=1`` (logged as a warning). Use an auth token.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

import numpy as np

from kvstore.errors import InvalidArgument, ProtocolError, Unavailable
from kvstore.transport import channel as channel_mod
from kvstore.transport.channel import cast_bytes
from kvstore.transport.framing import PREFIX_BYTES, header_length, pack_header
from kvstore.transport.limits import Limits
from kvstore.transport.payloads import whole_segments
from kvstore.transport.session import Session
from kvstore.transport.ucx_progress import LoopWorker
from kvstore.transport.urls import CarrierURL

log = logging.getLogger(__name__)
INLINE = 8192
MAX_SKIP = 256 << 20
HANDSHAKE_FLOOR_S = 5.0  # ucxx's own handshake timeout (its default)
BIND_RETRIES = 50  # a refused segment larger than this closes the connection


def ucx_env_defaults() -> None:
    os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
    # A restarted daemon must be able to listen on its port again while the
    # previous connections linger in TIME_WAIT.
    os.environ.setdefault("UCX_TCP_CM_REUSEADDR", "y")


def import_ucxx():
    ucx_env_defaults()
    try:
        import ucxx
    except ImportError as exc:  # pragma: no cover - the ucx extra is not installed
        raise Unavailable("the ucx carrier needs ucxx (pip install 'kvstore[ucx]')") from exc
    return ucxx


def _as_array(buf) -> np.ndarray:
    """ucxx takes numpy arrays (or anything with the buffer protocol)."""
    if isinstance(buf, np.ndarray):
        return buf
    return np.frombuffer(cast_bytes(buf), dtype=np.uint8)


def scratch_for(scratch: np.ndarray, nbytes: int) -> np.ndarray:
    """A buffer of at least ``nbytes`` to receive a dropped segment into (``scratch`` when
    it is large enough); a segment over ``MAX_SKIP`` is refused (ucx delivers whole
    messages: dropping one means receiving it)."""
    if nbytes > MAX_SKIP:
        raise ProtocolError(f"cannot skip a {nbytes}-byte ucx segment")
    return scratch if len(scratch) >= nbytes else np.empty(nbytes, dtype=np.uint8)


class UcxChannel:
    """A ucxx endpoint as a frame channel, used only on the loop that opened it.

    Transfers are posted as tagged requests on that loop's ``LoopWorker`` (it
    keeps each buffer alive until UCX is done with it, see
    ``transport/ucx_progress.py``); a use from another loop is refused.
    """

    def __init__(self, endpoint, worker: LoopWorker):
        from ucxx.types import Tag, TagMaskFull

        self.ep = endpoint
        self.worker = worker
        self._send_tag = Tag(endpoint._tags["msg_send"])
        self._recv_tag = Tag(endpoint._tags["msg_recv"])
        self._mask = TagMaskFull
        self._first = np.empty(INLINE, dtype=np.uint8)
        self._scratch = np.empty(0, dtype=np.uint8)
        self.closed = False
        self.peer = "ucx"
        worker.track(endpoint)

    def _raw(self):
        """The live ucxx endpoint, on its own loop (else a clear error)."""
        if self.closed or self.ep._ep is None:
            raise Unavailable("ucx connection closed")
        if asyncio.get_running_loop() is not self.worker.loop:
            raise RuntimeError("a ucx channel is used only on the event loop that opened it")
        raw = self.ep._ep
        raw.raise_on_error()
        return raw

    async def _recv(self, buf) -> None:
        from ucxx._lib.arr import Array
        from ucxx.exceptions import UCXMessageTruncatedError

        try:
            arr = Array(_as_array(buf))
            request = self._raw().tag_recv(arr, self._recv_tag, self._mask)
            if request.completed:  # the message was waiting: no future, no pass
                request.check_error()
                return
            await self.worker.wait(request, arr)
        except UCXMessageTruncatedError as exc:
            raise ProtocolError("message longer than declared") from exc
        except Exception as exc:
            if isinstance(exc, (asyncio.CancelledError, ProtocolError, RuntimeError, Unavailable)):
                raise
            raise Unavailable(f"ucx receive failed: {exc}") from exc

    async def _send(self, buf) -> None:
        from ucxx._lib.arr import Array

        try:
            arr = Array(_as_array(buf))
            request = self._raw().tag_send(arr, self._send_tag)
            if request.completed:  # most sends leave at once: no future, no pass
                request.check_error()
                return
            await self.worker.wait(request, arr)
        except Exception as exc:
            if isinstance(exc, (asyncio.CancelledError, RuntimeError, Unavailable)):
                raise
            raise Unavailable(f"ucx send failed: {exc}") from exc

    # -- receiving ------------------------------------------------------------
    async def read_header(self, limits: Limits, deadline: float | None = None):
        # ``deadline``: unused; ucx delivers a header as one whole message (no half headers)
        try:
            await self._recv(self._first)
        except Unavailable:
            return None  # the peer went away between frames
        length = header_length(self._first[:PREFIX_BYTES].tobytes())
        limits.check_header_length(length)
        if PREFIX_BYTES + length <= INLINE:
            return memoryview(self._first)[PREFIX_BYTES : PREFIX_BYTES + length]
        raw = bytearray(length)
        await self._recv(raw)
        return raw

    async def _in_frame(self, coro) -> None:
        """A transfer inside a frame: a peer silent for STALL_SECONDS fails it."""
        try:
            await asyncio.wait_for(coro, channel_mod.STALL_SECONDS)
        except asyncio.TimeoutError as exc:
            raise Unavailable("ucx peer stalled in the middle of a frame") from exc

    async def read_into(self, view) -> None:
        await self._in_frame(self._recv(view))

    def _scratch_for(self, nbytes: int) -> np.ndarray:
        self._scratch = scratch_for(self._scratch, nbytes)
        return self._scratch[:nbytes]

    async def skip(self, nbytes: int) -> None:
        await self._in_frame(self._recv(self._scratch_for(nbytes)))

    async def read_segments(self, targets, sizes: list[int]) -> None:
        """Receive every segment at once; a None target is received and dropped.

        ``targets`` may also be one buffer holding all segments back to back.
        """
        if not isinstance(targets, list):
            whole, targets, pos = cast_bytes(targets), [], 0
            for size in sizes:
                targets.append(whole[pos : pos + size])
                pos += size
        bufs = [t if t is not None else self._scratch_for(s) for t, s in zip(targets, sizes)]
        await self._in_frame(_all(self._recv(b) for b in bufs))

    # -- sending --------------------------------------------------------------
    async def send(self, header: dict, payloads=()) -> None:
        raw = pack_header(header)
        msgs = [raw] if len(raw) <= INLINE else [raw[:PREFIX_BYTES], raw[PREFIX_BYTES:]]
        msgs.extend(whole_segments(payloads))
        if len(msgs) == 1:
            await self._send(np.frombuffer(raw, dtype=np.uint8))
            return
        await self._in_frame(_all(self._send(m) for m in msgs))

    def close(self, abort: bool = False) -> None:
        """Abort the endpoint (always an abort in ucx) on its loop's thread."""
        if self.closed:
            return
        self.closed = True
        if self.worker.on_loop_thread() or self.worker.closed:
            self.worker.abort(self.ep)
            return
        try:
            self.worker.loop.call_soon_threadsafe(self.worker.abort, self.ep)
        except RuntimeError:  # the loop is closed: its teardown aborted every endpoint
            pass


async def _all(coros) -> None:
    """Post every transfer in order, wait for all; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def open_ucx_channel(url: CarrierURL, timeout: float) -> UcxChannel:
    """Connect; a caller that gives up early never cancels ucxx's handshake mid-flight.

    ucxx's handshake posts receives into buffers its coroutine owns: cancelling
    it while one is posted frees memory UCX may still write into (a hello
    cancelled within its first milliseconds crashed the daemon once). So the
    handshake runs as a task of its own, with at least ``HANDSHAKE_FLOOR_S``
    to finish; a caller that stops waiting gets ``Unavailable`` (or its
    cancellation) and the endpoint, if it comes, is aborted on this loop.
    """
    worker = LoopWorker.current()
    handshake = asyncio.ensure_future(worker.ctx.create_endpoint(
        url.host, url.port, connect_timeout=max(timeout, HANDSHAKE_FLOOR_S)))
    try:
        ep = await asyncio.wait_for(asyncio.shield(handshake), timeout)
    except BaseException as exc:
        handshake.add_done_callback(lambda t: _abort_late_endpoint(worker, t))
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
            raise
        raise Unavailable(f"cannot reach {url}: {exc!r}") from exc
    return UcxChannel(ep, worker)


def _abort_late_endpoint(worker: LoopWorker, handshake: asyncio.Future) -> None:
    """A handshake nobody waits for any more: abort what it made (its error is dropped)."""
    if handshake.cancelled() or handshake.exception() is not None:
        return
    ep = handshake.result()
    worker.track(ep)
    worker.abort(ep)


WILDCARDS = ("0.0.0.0", "::")


def check_bind_host(host: str) -> None:
    """Refuse a bind address ucxx cannot honour (it binds every interface)."""
    if host in WILDCARDS or os.environ.get("KVSTORE_UCX_ANY_INTERFACE", "") in ("1", "true", "yes"):
        return
    raise InvalidArgument(
        f"ucx://{host}: ucxx listens on every interface and cannot bind {host} only; "
        "listen on ucx://0.0.0.0:PORT explicitly, or set KVSTORE_UCX_ANY_INTERFACE=1 "
        "to accept every interface")


class UcxListener:
    carrier = "ucx"

    def __init__(self, server, url: CarrierURL):
        self.server = server
        self.requested = url
        self.worker: LoopWorker | None = None
        self._listener = None

    async def start(self) -> None:
        check_bind_host(self.requested.host)
        self.worker = LoopWorker.current()
        from ucxx.exceptions import UCXBusyError

        for attempt in range(BIND_RETRIES):  # a fixed port can linger after a restart
            try:
                self._listener = self.worker.ctx.create_listener(self._handle,
                                                                 self.requested.port or None)
                break
            except UCXBusyError:
                if not self.requested.port or attempt == BIND_RETRIES - 1:
                    raise
                await asyncio.sleep(0.1)
        log.info("listening on %s", self.url)
        if self.requested.host not in WILDCARDS:
            log.warning(
                "ucx listener on port %d binds every interface (ucxx takes no bind "
                "address); requested host %s", self._listener.port, self.requested.host,
            )

    async def _handle(self, endpoint) -> None:
        channel = UcxChannel(endpoint, self.worker)
        session = Session("ucx", peer=f"ucx:{id(endpoint):x}")
        task = self.server.spawn(self.server.dispatcher.serve(channel, session))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            pass
        finally:
            if task.done():
                channel.close()  # aborted on this loop (idempotent), never by the collector

    @property
    def url(self) -> str:
        port = self._listener.port if self._listener is not None else self.requested.port
        return str(CarrierURL("ucx", host=self.requested.host, port=port))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            gc.collect()  # ucxx unbinds when the listener object is freed
