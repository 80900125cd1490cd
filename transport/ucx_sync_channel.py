"""UcxSyncChannel: a ucx endpoint driven on the caller's thread (the synchronous client).

The synchronous ``RemoteStore`` calls talk to tcp and shm sockets themselves
(``transport/sync_channel.py``); this is the same for ucx. The caller's
thread posts the frame's messages on the channel's own ucx worker and
progresses that worker until the reply is complete: no event loop, no
background thread, no ucxx asyncio machinery. The frames are the ucx
carrier's (``transport/ucx.py``): the prefix and header as one tagged
message (two when the header is over ``INLINE``), then one message per
payload segment, received straight into the caller's buffer.

Waiting: after posting, the thread progresses the worker for at most
``KVSTORE_UCX_SYNC_SPIN_US`` (a reply usually lands within it), then arms
the worker and sleeps in ``poll`` on its event fd (and a wake-up fd for
``shutdown``) until the request's ``deadline``: an idle client costs no CPU,
here or in the daemon.

Memory safety (the rules of ``transport/ucx_progress.py``):

* **one thread at a time**: the worker is the channel's own and only the
  thread holding the connection's lock posts on it or progresses it;
  ``shutdown`` (from any thread) only sets a flag and writes the wake-up fd;
* **buffers outlive their requests**: a transfer that fails (deadline,
  shutdown, a peer error) aborts the endpoint and progresses the worker
  until every posted request completed before raising, so the caller never
  frees or reuses a buffer UCX may still write into; a request that still
  does not complete within ``DRAIN_S`` keeps its buffer for the life of the
  process (a leak, logged, never a write into freed memory);
* **bounded receives**: each receive is posted with the size expected; a
  longer message fails as truncated (``ProtocolError``), nothing grows.

Errors: the deadline passing raises ``ChannelTimeout`` (the connection turns
it into ``Timeout``); a peer gone, a shutdown or a closed channel raise
``Unavailable``.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time

import numpy as np

from kvstore.errors import ProtocolError, Unavailable
from kvstore.transport.channel import cast_bytes
from kvstore.transport.framing import PREFIX_BYTES, header_length, pack_header
from kvstore.transport.limits import Limits
from kvstore.transport.payloads import whole_segments
from kvstore.transport.sync_channel import ChannelTimeout
from kvstore.transport.ucx import INLINE, import_ucxx, scratch_for

log = logging.getLogger(__name__)
SPIN_S = float(os.environ.get("KVSTORE_UCX_SYNC_SPIN_US", "0")) * 1e-6
DRAIN_S = 5.0  # progress after an abort until every posted request completed
_LEAKED: list = []  # buffers of requests that never completed after an abort: never freed
_FORKED_AWAY: list = []  # a fork parent's ucx objects, never destroyed in the child
_PEER_INFO = struct.Struct("QQ")  # ucxx's handshake: the sender's receive tag and its hash


class _Context:
    """The process's UCX context (made on first use, again in a child of fork)."""

    _lock = threading.Lock()
    _pid = 0
    _ctx = None

    @classmethod
    def get(cls):
        with cls._lock:
            if cls._ctx is None or cls._pid != os.getpid():
                import_ucxx()
                from ucxx._lib.libucxx import UCXContext

                cls._ctx, cls._pid = UCXContext({}), os.getpid()
            return cls._ctx


def _array(buf):
    """ucxx's ``Array`` over ``buf``'s bytes (no copy; it keeps ``buf`` alive)."""
    from ucxx._lib.arr import Array

    if not isinstance(buf, (bytes, bytearray, np.ndarray)):
        buf = cast_bytes(buf)
    return Array(buf)


class UcxSyncChannel:
    """A ucx endpoint on a worker of its own, progressed by the calling thread."""

    def __init__(self, worker, endpoint, send_tag: int, recv_tag: int):
        from ucxx.types import Tag, TagMaskFull

        self.worker = worker
        self.ep = endpoint
        self._send_tag = Tag(send_tag)
        self._recv_tag = Tag(recv_tag)
        self._mask = TagMaskFull
        self.deadline = float("inf")  # set by the connection before each request
        self.closed = False
        self._shut = False
        self._first = np.empty(INLINE, dtype=np.uint8)
        self._first_arr = _array(self._first)
        self._header: tuple | None = None  # the next header's receive, posted with a request
        self._scratch = np.empty(0, dtype=np.uint8)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()  # shutdown (any thread) against close
        self._poll = select.poll()
        self._poll.register(worker.epoll_file_descriptor, select.POLLIN)
        self._poll.register(self._wake, select.POLLIN)

    # -- waiting --------------------------------------------------------------
    def _complete(self, posted: list) -> None:
        """Progress until every ``(request, buffer)`` in ``posted`` completed; errors raised.

        Any failure aborts the endpoint and drains every posted request first
        (see the module doc): the caller's buffers are free again when this raises.
        """
        try:
            self._progress_until_done(posted)
            for request, _ in posted:
                request.check_error()
        except BaseException as exc:
            self._abandon(posted)
            raise _wrapped(exc) from exc

    def _progress_until_done(self, posted: list) -> None:
        worker = self.worker
        worker.progress()
        pending = [r for r, _ in posted if not r.completed]
        spin_end = time.monotonic() + SPIN_S if pending else 0.0
        while pending:
            if self._shut:
                raise Unavailable("ucx connection shut down")
            now = time.monotonic()
            if now >= spin_end:
                left = self.deadline - now
                if left <= 0:
                    raise ChannelTimeout("deadline passed")
                if worker.arm():  # nothing pending in UCX: sleep until its event fd fires
                    self._poll.poll(min(left, 86400.0) * 1000.0 + 1)
            worker.progress()
            pending = [r for r in pending if not r.completed]

    def _abandon(self, posted: list) -> None:
        """Abort the endpoint, then progress until every posted request completed."""
        self.closed = True
        self._abort_endpoint()
        if self._header is not None:
            posted = [*posted, self._header]
            self._header = None
        deadline = time.monotonic() + DRAIN_S
        pending = [p for p in posted if not p[0].completed]
        while pending and time.monotonic() < deadline:
            self.worker.progress()
            pending = [p for p in pending if not p[0].completed]
        if pending:
            log.warning("%d ucx requests did not complete after an abort: their buffers are kept",
                        len(pending))
            _LEAKED.extend(pending)

    def _check_usable(self) -> None:
        if self.closed:
            raise Unavailable("ucx connection closed")
        if self._shut:
            raise Unavailable("ucx connection shut down")

    # -- receiving ------------------------------------------------------------
    def _post_header_receive(self) -> tuple:
        """The receive of the peer's next header message (posted once, kept until it lands)."""
        if self._header is None:
            arr = self._first_arr
            self._header = (self.ep.tag_recv(arr, self._recv_tag, self._mask), arr)
        return self._header

    def _posting_failed(self, posted: list, exc: BaseException) -> BaseException:
        """A post raised (a dead endpoint, a bad buffer): abort, drain, the error to raise."""
        self._abandon(posted)
        return _wrapped(exc)

    def _recv_all(self, bufs: list) -> None:
        self._check_usable()
        posted = []
        try:
            for buf in bufs:
                arr = _array(buf)
                posted.append((self.ep.tag_recv(arr, self._recv_tag, self._mask), arr))
        except BaseException as exc:
            raise self._posting_failed(posted, exc) from exc
        self._complete(posted)

    def read_header(self, limits: Limits):
        """The raw header of the next frame (valid until the next read); None if the peer left."""
        try:
            self._check_usable()
            try:
                header = self._post_header_receive()
            except BaseException as exc:
                raise self._posting_failed([], exc) from exc
            self._complete([header])
        except Unavailable:
            return None  # the peer went away between frames
        finally:
            self._header = None
        length = header_length(self._first[:PREFIX_BYTES].tobytes())
        limits.check_header_length(length)
        if PREFIX_BYTES + length <= INLINE:
            return memoryview(self._first)[PREFIX_BYTES : PREFIX_BYTES + length]
        raw = bytearray(length)
        self._recv_all([raw])
        return raw

    def read_into(self, view) -> None:
        self._recv_all([view])

    def _scratch_for(self, nbytes: int) -> np.ndarray:
        self._scratch = scratch_for(self._scratch, nbytes)
        return self._scratch[:nbytes]

    def read_segments(self, targets, sizes: list[int]) -> None:
        """Every segment posted at once (one buffer each, None: dropped, or one buffer)."""
        if not isinstance(targets, list):
            whole, targets, pos = cast_bytes(targets), [], 0
            for size in sizes:
                targets.append(whole[pos : pos + size])
                pos += size
        self._recv_all([t if t is not None else self._scratch_for(s)
                        for t, s in zip(targets, sizes)])

    # -- sending --------------------------------------------------------------
    def send(self, header: dict, payloads=()) -> None:
        """One frame: the header message(s), then one message per payload (no copy).

        The receive of the reply's header is posted first, so a reply that
        lands while this thread still progresses the sends is matched at once.
        """
        self._send_raw(pack_header(header), payloads)

    def send_frame(self, bufs: list, nbytes: int, payloads=()) -> None:
        """``send`` of a frame laid out as buffers (``RequestFramer.frame``): joined into
        the header message(s) that ucx sends as whole messages."""
        self._send_raw(b"".join(bufs), payloads)

    def _send_raw(self, raw: bytes, payloads) -> None:
        self._check_usable()
        msgs = [raw] if len(raw) <= INLINE else [raw[:PREFIX_BYTES], raw[PREFIX_BYTES:]]
        msgs.extend(whole_segments(payloads))
        posted = []
        try:
            self._post_header_receive()
            for msg in msgs:
                arr = _array(msg)
                posted.append((self.ep.tag_send(arr, self._send_tag), arr))
        except BaseException as exc:
            raise self._posting_failed(posted, exc) from exc
        self._complete(posted)

    # -- the end ----------------------------------------------------------------
    def shutdown(self) -> None:
        """Wake a thread blocked on this channel (from any thread); it then fails."""
        self._shut = True
        with self._wake_lock:
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def _abort_endpoint(self) -> None:
        ep, self.ep = self.ep, None
        if ep is None:
            return
        try:
            ep.close_blocking(period=10**9, max_attempts=1)
            ep.remove_close_callback()
        except Exception:  # pragma: no cover - already gone
            pass

    def close(self, abort: bool = False) -> None:
        """Close (on the thread holding the connection's lock); ucx closes are aborts."""
        if self.ep is not None or self._header is not None:
            self._abandon([])  # the header receive posted with the last request, if any
        self.closed = True
        with self._wake_lock:
            if self._wake >= 0:
                os.close(self._wake)
                self._wake = -1

    def forget(self) -> None:
        """In a child of fork: drop this channel without touching UCX (the parent's worker).

        Destroying the copied worker or endpoint here could disconnect the
        parent's connection, so they are kept, unused, for the child's life.
        """
        self.closed = True
        _FORKED_AWAY.append((self.worker, self.ep, self._header, self._first))
        self.ep, self._header = None, None


def _wrapped(exc: BaseException) -> BaseException:
    """ucxx's errors as the channel's: truncation -> ProtocolError, the rest -> Unavailable."""
    from ucxx.exceptions import UCXMessageTruncatedError

    if isinstance(exc, UCXMessageTruncatedError):
        return ProtocolError("ucx message longer than declared")
    if isinstance(exc, (ChannelTimeout, ProtocolError, Unavailable)) or \
            not isinstance(exc, Exception):
        return exc
    return Unavailable(f"ucx transfer failed: {exc}")


def open_ucx_sync(url, timeout: float) -> UcxSyncChannel:
    """Connect to a ucx ``CarrierURL`` within ``timeout`` seconds, on this thread.

    The handshake is ucxx's own (``exchange_peer_info``, client side): receive
    the listener's tag and its hash on the stream, send ours; the daemon's
    ucxx listener cannot tell this client from an asyncio one.
    """
    import_ucxx()
    from ucxx._lib.libucxx import UCXEndpoint, UCXWorker
    from ucxx._lib_async.utils import hash64bits

    try:
        worker = UCXWorker(_Context.get(), enable_delayed_submission=False,
                           enable_python_future=False)
        worker.init_blocking_progress_mode()
        ep = UCXEndpoint.create(worker, url.host, url.port, True)
    except Exception as exc:
        raise Unavailable(f"cannot reach {url}: {exc}") from exc
    channel = UcxSyncChannel(worker, ep, 0, 0)
    channel.deadline = time.monotonic() + timeout
    my_tag = hash64bits("msg_tag", os.urandom(16), ep.handle)
    peer = bytearray(_PEER_INFO.size)
    mine = _PEER_INFO.pack(my_tag, hash64bits(my_tag))
    try:
        for post, buf in ((ep.stream_recv, peer), (ep.stream_send, mine)):
            arr = _array(buf)
            channel._complete([(post(arr), arr)])
    except (ChannelTimeout, Unavailable, ProtocolError) as exc:
        channel.close()
        why = f"no answer to connect within {timeout:g}s" if isinstance(exc, ChannelTimeout) \
            else f"the ucx handshake failed: {exc}"
        raise Unavailable(f"cannot reach {url}: {why}") from exc
    peer_tag, checksum = _PEER_INFO.unpack(bytes(peer))
    if checksum != hash64bits(peer_tag):
        channel.close()
        raise Unavailable(f"cannot reach {url}: the ucx handshake's checksum is wrong")
    from ucxx.types import Tag

    channel._send_tag, channel._recv_tag = Tag(peer_tag), Tag(my_tag)
    channel.deadline = float("inf")
    return channel
