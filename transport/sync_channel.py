"""BlockingChannel: a tcp socket or shm control socket used from the caller's thread.

The synchronous client's channel (``transport.sync_connection``): the same
frames as ``SocketChannel`` (``framing``), sent and received with plain
syscalls on the thread that makes the call, never through an event loop.
The socket is blocking: a receive or send waits in the kernel itself, its
wait bounded by ``SO_RCVTIMEO`` / ``SO_SNDTIMEO``, which the channel keeps at
``WAIT_QUANTUM`` or at what is left of the request's ``deadline``
(``time.monotonic``) if that is less; past the deadline it raises
``ChannelTimeout``. No thread hand-off, and no ``poll``: a lookup costs one
``sendmsg`` and one ``recv`` (a non-blocking socket paid a failed ``recv``,
its exception and a ``poll`` whenever the reply was not there yet, which,
with the daemon on the same CPU, is every time).

On shm the receives are ``recvmsg`` calls that keep the descriptors that
arrive, as ``FdReceivingChannel`` does, until ``take_fds`` takes the tenant's
arena, which comes with the hello reply; plain ``recv_into`` calls after it.

Only one thread may use a channel at a time (the connection holds a lock).
"""

from __future__ import annotations

import os
import socket
import struct
import time

from kvstore.errors import Unavailable
from kvstore.transport.bulk import IOV_MAX, advance
from kvstore.transport.channel import READ_AHEAD, cast_bytes
from kvstore.transport.fd_channel import recv_with_fds, widen_send_buffer
from kvstore.transport.framing import PREFIX, PREFIX_BYTES, pack_header
from kvstore.transport.limits import Limits
from kvstore.transport.payloads import payload_views
from kvstore.transport.reply_spin import ReplySpin

_PREFIX_FROM = PREFIX.unpack_from
WAIT_QUANTUM = 1.0  # seconds one blocking syscall may wait before the deadline is looked at
_TIMEVAL = struct.Struct("@ll")  # struct timeval (SO_RCVTIMEO / SO_SNDTIMEO)


class ChannelTimeout(TimeoutError):
    """The request's deadline passed while the channel waited for the peer."""


class BlockingChannel:
    def __init__(self, sock: socket.socket, receive_fds: bool = False):
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.receive_fds = receive_fds
        # one receive: ``recv_into``, or on shm a ``recvmsg`` that keeps the descriptors
        self._recv_once = self._recv_fds if receive_fds else sock.recv_into
        # replies are polled for briefly before a sleep; on shm only once the hello's
        # descriptor is in (a plain receive from then on)
        self._spin_after_hello = ReplySpin()
        self._spin = None if receive_fds else self._spin_after_hello
        self.received_fds: list[int] = []
        self.deadline = float("inf")  # set by the connection before each request
        self._buf = bytearray(READ_AHEAD)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.closed = False
        self._wait_s = 0.0  # the socket's SO_RCVTIMEO and SO_SNDTIMEO
        self._set_wait(WAIT_QUANTUM)

    # -- waiting --------------------------------------------------------------
    def _set_wait(self, seconds: float) -> None:
        whole = int(seconds)
        # at least 1 us: a zero timeval would mean "wait forever"
        tv = _TIMEVAL.pack(whole, max(1, int((seconds - whole) * 1e6)))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except OSError as exc:
            raise Unavailable(f"socket failed: {exc}") from exc
        self._wait_s = seconds

    def _arm(self) -> None:
        """Bound the next blocking call by the deadline (``ChannelTimeout`` once it passed)."""
        left = self.deadline - time.monotonic()
        if left < self._wait_s:
            if left <= 0:
                raise ChannelTimeout("deadline passed")
            self._set_wait(left)
        elif self._wait_s < WAIT_QUANTUM:  # an earlier short deadline lowered it
            self._set_wait(min(left, WAIT_QUANTUM))

    # -- receiving ------------------------------------------------------------
    def _recv(self, view: memoryview) -> int:
        if self._spin is not None:  # poll briefly before sleeping (``transport.reply_spin``)
            try:
                n = self._spin.recv_into(self.sock, view)
            except OSError as exc:
                raise Unavailable(f"receive failed: {exc}") from exc
            if n is not None:
                return n
        while True:
            self._arm()
            try:
                return self._recv_once(view)
            except (BlockingIOError, InterruptedError):  # SO_RCVTIMEO passed: the deadline?
                continue
            except OSError as exc:
                raise Unavailable(f"receive failed: {exc}") from exc

    def _recv_fds(self, view: memoryview) -> int:
        return recv_with_fds(self.sock, view, self.received_fds)

    def _fill(self, need: int, eof_ok: bool = False) -> bool:
        start, end = self._start, self._end
        if end - start >= need:
            return True
        view = self._view
        if start:
            if end > start:
                view[: end - start] = view[start:end]
            end -= start
            self._start = 0
        self._end = end
        while end < need:
            n = self._recv(view[end:] if end else view)
            if n == 0:
                if eof_ok and end == 0:
                    return False
                raise Unavailable("connection closed in the middle of a frame")
            end += n
            self._end = end
        return True

    def _take(self, n: int) -> memoryview:
        view = self._view[self._start : self._start + n]
        self._start += n
        return view

    def read_header(self, limits: Limits):
        """The raw header of the next frame (valid until the next read); None on a clean EOF.

        A reply usually arrives whole in one ``recv`` (the read-ahead holds 64 KiB):
        its header is then a view into the read-ahead, with no second call.
        """
        if self._end - self._start < PREFIX_BYTES and not self._fill(PREFIX_BYTES, eof_ok=True):
            return None
        start = self._start + PREFIX_BYTES
        length = _PREFIX_FROM(self._buf, self._start)[0]
        if length > limits.max_header_bytes:
            limits.check_header_length(length)  # raises TooLarge
        stop = start + length
        if stop <= self._end:  # the whole header is here
            self._start = stop
            return self._view[start:stop]
        self._start = start
        if length <= len(self._buf):
            self._fill(length)
            return self._take(length)
        raw = bytearray(length)
        self.read_into(memoryview(raw))
        return raw

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly: read-ahead bytes first, then ``recv_into`` it directly."""
        view = cast_bytes(view)
        pos = min(self._end - self._start, len(view))
        if pos:
            view[:pos] = self._take(pos)
        while pos < len(view):
            n = self._recv(view[pos:])
            if n == 0:
                raise Unavailable("connection closed in the middle of a payload")
            pos += n

    def read_segments(self, targets, sizes: list[int]) -> None:
        """Consecutive segments into ``targets`` (one buffer each, None: dropped) or one buffer."""
        if not isinstance(targets, list):
            self.read_into(cast_bytes(targets)[: sum(sizes)])
            return
        scratch = None
        for target, size in zip(targets, sizes):
            if target is not None:
                self.read_into(target)
                continue
            if scratch is None:
                scratch = memoryview(bytearray(min(max(sizes), 1 << 20)))
            while size:
                step = min(size, len(scratch))
                self.read_into(scratch[:step])
                size -= step

    def take_fds(self) -> list[int]:
        """The descriptors received so far: the arena, which comes with the hello reply
        (``ShmOps.on_connect`` takes it). From then on the channel receives with a plain
        ``recv_into`` (a ``recvmsg`` and its ancillary data cost 1.5 us more a reply): the
        daemon sends no other descriptor, and one sent all the same is closed by the
        kernel (no room for it), never held."""
        fds, self.received_fds = self.received_fds, []
        self._recv_once = self.sock.recv_into
        self._spin = self._spin_after_hello
        return fds

    # -- sending --------------------------------------------------------------
    def send(self, header: dict, payloads=()) -> None:
        """One frame: ``sendmsg`` of the header and the payload views (no payload copy)."""
        raw = pack_header(header)
        self.send_frame([raw], len(raw), payloads)

    def send_frame(self, bufs: list, nbytes: int, payloads=()) -> None:
        """One frame laid out as ``bufs`` (``RequestFramer.frame``: the length prefix and
        header, large arguments as their own buffers; ``nbytes`` in all) followed by the
        payload views, with one ``sendmsg`` when the socket takes it all (a lookup); no
        copy of any of them."""
        if payloads:
            bufs.extend(payload_views(payloads))
            nbytes = -1  # (not compared: the loop below counts)
        if len(bufs) <= IOV_MAX:
            self._arm()
            try:
                sent = self.sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):  # SO_SNDTIMEO passed: the deadline?
                sent = 0
            except OSError as exc:
                raise Unavailable(f"send failed: {exc}") from exc
            if sent == nbytes:
                return
            i = advance(bufs, 0, sent)
        else:
            i = 0
        count = len(bufs)
        while i < count:
            self._arm()
            try:
                sent = self.sock.sendmsg(bufs[i : i + IOV_MAX])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise Unavailable(f"send failed: {exc}") from exc
            i = advance(bufs, i, sent)

    # -- the end ----------------------------------------------------------------
    def forget(self) -> None:
        """In a child of fork: close this process's copy of the socket only (no shutdown,
        no reset: the parent's connection goes on)."""
        self.closed = True
        self.sock.close()

    def shutdown(self) -> None:
        """Wake a thread blocked on this channel (from another thread); it then fails."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, abort: bool = False) -> None:
        """Close; ``abort`` resets the connection (RST), as ``SocketChannel.close`` does."""
        if self.closed:
            return
        self.closed = True
        for fd in self.take_fds():
            try:
                os.close(fd)
            except OSError:
                pass
        if abort:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


def open_blocking(url, timeout: float) -> BlockingChannel:
    """Connect to a tcp or shm ``CarrierURL`` within ``timeout`` seconds (``Unavailable``)."""
    try:
        if url.scheme == "shm":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            widen_send_buffer(sock)
            sock.settimeout(timeout)
            try:
                sock.connect(url.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((url.host, url.port), timeout=timeout)
    except OSError as exc:
        why = str(exc) or (f"no answer to connect within {timeout:g}s"
                           if isinstance(exc, TimeoutError) else type(exc).__name__)
        raise Unavailable(f"cannot reach {url}: {why}") from exc
    return BlockingChannel(sock, receive_fds=url.scheme == "shm")
