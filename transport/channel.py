"""SocketChannel: framed messages over a stream socket (TCP or Unix) on asyncio.

Both ends of the tcp carrier and of the shm control socket use it. asyncio's
StreamReader has no ``readinto``, and ``StreamWriter.writelines`` joins its
buffers (a copy) before Python 3.12, so the channel drives a non-blocking
socket with the event loop's primitives instead:

* receive: a small read-ahead buffer (64 KiB) holds prefixes and headers, so
  a small request costs one ``recv``; waits for data go through a
  ``ReadWatch`` (the descriptor stays registered with the loop across waits); payload segments are received with
  ``recv_into`` straight into the caller's memory (an arena slot, a tensor),
  after the bytes already read ahead are moved over;
* send: ``sendmsg`` of the header and the payload buffers (arena views)
  as one gather list, so payload bytes are never copied in user space;
* bulk (a transfer of ``BULK_BYTES`` or more): a worker thread of
  ``transport.bulk`` moves it with blocking syscalls. Driven from the event
  loop, every "socket readable/writable" event costs a loop iteration in
  Python, and a 64 MiB transfer sees hundreds of them: measured here, that
  overhead was 10-20% of a 2 MiB-block batch. Smaller transfers stay on the
  loop (``SO_RCVLOWAT`` batches their wake-ups);
* a peer silent for ``STALL_SECONDS`` inside a frame fails the transfer; a
  connection given up mid-frame is reset (``close(abort=True)``).

Only one coroutine may read and one may write a channel at a time (the server
handles a connection's requests in order; the client holds a lock).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Sequence

from kvstore.errors import Stalled, Unavailable
from kvstore.transport import bulk
from kvstore.transport.framing import PREFIX_BYTES, header_length, pack_header
from kvstore.transport.limits import Limits
from kvstore.transport.payloads import cast_bytes, payload_views
from kvstore.transport.read_watch import ReadWatch

READ_AHEAD = 64 << 10
SMALL_READ_AHEAD = 16 << 10  # until ``grow`` (the pre-hello header limit's default)
# A bulk receive asks the kernel to report the socket readable only once this
# much has arrived (SO_RCVLOWAT): one event-loop wake-up per chunk instead of
# one per segment of data, which is most of the cost of a large receive in Python.
BULK_LOWAT = 256 << 10
BULK_BYTES = 1 << 20  # a transfer this large goes to a bulk worker (transport.bulk)
# A transfer that makes no progress for this long inside a frame fails (a
# peer that stopped reading or writing cannot hold a worker, or the leases
# its request pinned, for ever). Idle time between frames is not limited.
STALL_SECONDS = 60.0
def tune_socket(sock: socket.socket) -> None:
    """Non-blocking; no Nagle delay on TCP (small requests must not wait)."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SocketChannel:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop | None = None,
                 read_ahead: int = READ_AHEAD):
        tune_socket(sock)
        self.sock = sock
        self.loop = loop or asyncio.get_running_loop()
        # the daemon starts a connection with a small buffer (pre-hello: thousands may be
        # open at once); ``grow`` gives it the full read-ahead once it has said hello
        self._buf = bytearray(read_ahead)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.closed = False
        self._watch = ReadWatch(self.loop, sock.fileno())  # the receive side's waits
        self._bulk_active = False
        self._lowat_ok = sock.family in (socket.AF_INET, socket.AF_INET6)
        try:
            self.peer = str(sock.getpeername()) or "unix"
        except OSError:
            self.peer = "?"

    # -- receiving ------------------------------------------------------------
    def _recv_once(self, view: memoryview) -> int:
        """One non-blocking receive (the shm client's channel receives descriptors too)."""
        return self.sock.recv_into(view)

    async def _recv_into(self, view: memoryview, stall: bool | float = False) -> int:
        """One receive; ``stall``: inside a frame, where a silent peer is an error
        (True: after ``STALL_SECONDS``; a number: after that many seconds)."""
        while True:
            try:
                return self._recv_once(view)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise Unavailable(f"receive failed: {exc}") from exc
            if not stall:
                await self._watch.wait()
                continue
            limit = STALL_SECONDS if stall is True else float(stall)
            try:
                await asyncio.wait_for(self._watch.wait(), limit)
            except asyncio.TimeoutError as exc:
                raise Stalled(f"peer sent nothing for {limit:.0f}s mid-frame") from exc

    async def _fill(self, need: int, eof_ok: bool = False, stall: bool | float = False) -> bool:
        """Buffer at least ``need`` (<= READ_AHEAD) bytes; False on a clean EOF.

        ``stall``: the limit on silence once the first byte is there (the wait
        for the first byte of a frame, ``eof_ok``, is not limited).
        """
        if self._end - self._start >= need:
            return True
        if self._start:
            size = self._end - self._start
            self._view[:size] = self._view[self._start : self._end]
            self._start, self._end = 0, size
        while self._end - self._start < need:
            waiting = eof_ok and self._end == self._start
            n = await self._recv_into(self._view[self._end :], stall=False if waiting else stall)
            if n == 0:
                if eof_ok and self._end == self._start:
                    return False
                raise Unavailable("connection closed in the middle of a frame")
            self._end += n
        return True

    def grow(self, size: int = READ_AHEAD) -> None:
        """Give the read-ahead buffer ``size`` bytes (kept: what is buffered now)."""
        if len(self._buf) >= size:
            return
        have = self._end - self._start
        buf = bytearray(size)
        buf[:have] = self._view[self._start : self._end]
        self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, have

    def _take(self, n: int) -> memoryview:
        view = self._view[self._start : self._start + n]
        self._start += n
        return view

    async def read_header(self, limits: Limits, deadline: float | None = None):
        """The raw header of the next frame, or None when the peer closed cleanly.

        The length is checked against ``limits`` before the header is
        allocated or read. The returned view is valid until the next read.
        ``deadline``: once a frame's first byte is in, seconds of silence
        after which the peer is dropped (``Stalled``) before the header is whole.
        """
        stall = deadline if deadline else False
        if not await self._fill(PREFIX_BYTES, eof_ok=True, stall=stall):
            return None
        length = header_length(self._take(PREFIX_BYTES))
        limits.check_header_length(length)
        if length <= len(self._buf):
            await self._fill(length, stall=stall)
            return self._take(length)
        raw = bytearray(length)
        await self.read_into(memoryview(raw))
        return raw

    async def read_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly: read-ahead bytes first, then ``recv_into`` directly."""
        view = cast_bytes(view)
        have = min(self._end - self._start, len(view))
        if have:
            view[:have] = self._take(have)
        pos = have
        total = len(view)
        if total - pos >= BULK_BYTES and bulk.take_slot():
            await self._bulk(bulk.recv_blocking, view[pos:])
            return
        lowat = 1
        try:
            while pos < total:
                want = min(total - pos, BULK_LOWAT)
                if want != lowat and self._lowat_ok:  # wake once per chunk, not per packet
                    lowat = self._set_lowat(want)
                n = await self._recv_into(view[pos:], stall=True)
                if n == 0:
                    raise Unavailable("connection closed in the middle of a payload")
                pos += n
        finally:
            if lowat != 1:
                self._set_lowat(1)

    def _set_lowat(self, nbytes: int) -> int:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            self._lowat_ok = False
            return 1
        return nbytes

    async def skip(self, nbytes: int) -> None:
        """Read and drop ``nbytes`` (a refused request's payload) through the read-ahead buffer."""
        while nbytes:
            if self._end == self._start:
                self._start = self._end = 0
                n = await self._recv_into(self._view, stall=True)
                if n == 0:
                    raise Unavailable("connection closed in the middle of a payload")
                self._end = n
            step = min(nbytes, self._end - self._start)
            self._start += step
            nbytes -= step

    async def read_segments(self, targets, sizes: list[int]) -> None:
        """Receive consecutive segments; a None target is read and dropped.

        ``targets`` is a list (one buffer or None per segment) or one buffer
        that holds all the segments back to back (read in one stream).
        """
        if not isinstance(targets, list):
            await self.read_into(cast_bytes(targets)[: sum(sizes)])
            return
        if sum(sizes) >= BULK_BYTES:
            await self._read_scatter(targets, sizes)
            return
        for target, size in zip(targets, sizes):
            if target is None:
                await self.skip(size)
            else:
                await self.read_into(target)

    async def _read_scatter(self, targets: list, sizes: list[int]) -> None:
        """All segments in one bulk job; dropped ones land in a scratch buffer."""
        views = []
        scratch = None
        for target, size in zip(targets, sizes):
            if target is not None:
                views.append(cast_bytes(target))
                continue
            if scratch is None:
                scratch = memoryview(bytearray(min(max(sizes), BULK_BYTES)))
            while size:
                step = min(size, len(scratch))
                views.append(scratch[:step])
                size -= step
        i = 0
        while i < len(views) and self._end > self._start:  # the read-ahead bytes first
            have = min(self._end - self._start, len(views[i]))
            views[i][:have] = self._take(have)
            if have == len(views[i]):
                i += 1
            else:
                views[i] = views[i][have:]
        if i == len(views):
            return
        if bulk.take_slot():
            await self._bulk(bulk.recv_scatter_blocking, views[i:])
            return
        for view in views[i:]:  # every worker busy: on the loop
            await self.read_into(view)

    # -- sending --------------------------------------------------------------
    async def _writable(self) -> None:
        fut = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await asyncio.wait_for(fut, STALL_SECONDS)
        except asyncio.TimeoutError as exc:
            raise Unavailable(f"peer read nothing for {STALL_SECONDS:.0f}s") from exc
        finally:
            self.loop.remove_writer(fd)

    async def send(self, header: dict, payloads: Sequence = ()) -> None:
        """Send one frame: ``sendmsg`` of the header and payload views (no payload copy)."""
        bufs = [memoryview(pack_header(header))]
        if payloads:
            bufs.extend(payload_views(payloads))
        await self.send_buffers(bufs)

    async def send_buffers(self, bufs: list[memoryview]) -> None:
        if sum(len(b) for b in bufs) >= BULK_BYTES and bulk.take_slot():
            await self._bulk(bulk.send_blocking, bufs)
            return
        sock = self.sock
        i = 0
        count = len(bufs)
        while i < count:
            try:
                if count - i == 1:
                    sent = sock.send(bufs[i])
                else:
                    sent = sock.sendmsg(bufs[i : i + bulk.IOV_MAX])
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise Unavailable(f"send failed: {exc}") from exc
            i = bulk.advance(bufs, i, sent)

    # -- bulk transfers on a worker thread ----------------------------------------
    async def _bulk(self, fn, *args) -> None:
        """Run ``fn(sock, *args)`` with the socket blocking, on a bulk worker thread.

        The caller holds a bulk slot (``_take_bulk_slot``); it is given back
        when the worker is done. The loop does not watch the socket meanwhile
        (one reader, one writer).
        If the awaiting task is cancelled, the socket is shut down so the
        worker returns, and the channel closes once it has.
        """
        if self.closed:
            bulk.give_slot()
            raise Unavailable("channel closed")
        self._watch.pause()  # the worker reads the socket: the loop must not watch it
        self.sock.settimeout(STALL_SECONDS)  # blocking, with a stall limit
        self._bulk_active = True
        try:
            job = bulk.executor().submit(fn, self.sock, *args)
        except BaseException:
            bulk.give_slot()
            self._finish_bulk()
            raise
        job.add_done_callback(bulk.give_slot)
        fut = asyncio.wrap_future(job, loop=self.loop)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.close(abort=True)  # mid-frame: the stream is useless now
            fut.add_done_callback(self._after_cancelled_bulk)
            raise
        except BaseException:
            self._finish_bulk()
            raise
        self._finish_bulk()

    def _finish_bulk(self) -> None:
        self._bulk_active = False
        if self.closed:
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass
        else:
            self.sock.setblocking(False)

    def _after_cancelled_bulk(self, fut) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: the transfer was abandoned on purpose
        self._finish_bulk()

    def close(self, abort: bool = False) -> None:
        """Close the connection; ``abort`` resets it (RST) instead of a FIN.

        A connection given up in the middle of a frame is aborted: a graceful
        close would leave the peer blocked sending into a window that the
        closed socket never opens again (seen here: a daemon's send stuck
        until its stall timeout, holding a read lease); a reset fails it at once.
        """
        self._watch.stop()
        if abort and not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        if self._bulk_active:  # a worker is inside a syscall: wake it, it closes after
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass
