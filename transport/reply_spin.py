"""ReplySpin: the synchronous client polls briefly for a reply before it sleeps.

Why. A thread that sleeps while the daemon serves its request on another
CPU pays twice per round trip on a virtual machine: its vCPU halts (an exit
to the hypervisor), and the daemon's reply must wake it with an
inter-processor interrupt (another exit); the daemon's send runs the wake-up
inside its own syscall. Whether client and daemon share a CPU is the
scheduler's choice of the moment, and the two cases differ by 2x:
in ``benchmarks.lookup`` on the quiet 2-vCPU dev machine a tcp ``ns.lookup``
took 69-77 µs in runs where they shared a CPU and 128-157 µs where they did
not; with this spin, 84-94 µs in every run. The kernel's own busy polling
(``SO_BUSY_POLL``) does not apply to loopback or Unix sockets. UCX does the
same (spin, then block on its event fd). ``benchmarks.concurrency`` (16 and
64 clients on the two cores) was unchanged by it: 16 clients 5,035 / 2,872
ops/s over shm / tcp with the spin, 4,557 / 2,791 without, in runs
back to back.

How. For at most the budget (``KVSTORE_REPLY_SPIN_US`` microseconds,
default ``DEFAULT_SPIN_US``; 0 turns it off) the waiting thread tries a
non-blocking receive (``MSG_DONTWAIT``), and calls ``sched_yield`` between
tries: a runnable thread on the same CPU (the daemon
itself, when the scheduler put both there) runs at once instead of waiting
for the spinner's time slice to end. Only receives spin (a reply's header,
and its payload while it keeps arriving); sends block as before.

Adaptive. A reply that did not come within the budget made the spin pure
waste (a slow op, an overloaded daemon, many clients on few cores). After
``MISSES`` such waits in a row the spin is skipped for the next ``BACKOFF``
waits, then tried again, so a client whose replies are slow burns at most
one budget in ``BACKOFF / MISSES`` waits.
"""

from __future__ import annotations

import os
import socket
import time

DEFAULT_SPIN_US = 200.0
MISSES = 4  # waits in a row whose reply came after the budget: back off
BACKOFF = 64  # waits that sleep at once after a back-off, before spinning again


def budget_from_env() -> float:
    """The spin budget in seconds from ``KVSTORE_REPLY_SPIN_US`` (a bad value: the default)."""
    raw = os.environ.get("KVSTORE_REPLY_SPIN_US", "")
    try:
        micros = float(raw) if raw else DEFAULT_SPIN_US
    except ValueError:
        micros = DEFAULT_SPIN_US
    return max(0.0, min(micros, 10_000.0)) * 1e-6


class ReplySpin:
    """Spin-then-sleep policy of one channel (used by one thread at a time, as the channel is)."""

    def __init__(self, budget_s: float | None = None):
        self.budget_s = budget_from_env() if budget_s is None else budget_s
        self.hits = 0  # waits whose reply came within the spin
        self.misses = 0  # waits that spun the whole budget in vain
        self.skipped = 0  # waits that slept at once (backing off)
        self._missed_in_row = 0
        self._skip_left = 0

    def recv_into(self, sock: socket.socket, view) -> int | None:
        """A non-blocking ``recv_into`` of ``sock`` tried for up to the budget.

        The bytes received (0: the peer closed), or None when nothing came in
        time: the caller then sleeps in its blocking receive. Socket errors
        other than "nothing yet" propagate.
        """
        if self.budget_s <= 0.0:
            return None
        if self._skip_left:
            self._skip_left -= 1
            self.skipped += 1
            return None
        end = time.perf_counter() + self.budget_s
        while True:
            try:
                n = sock.recv_into(view, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass
            else:
                self.hits += 1
                self._missed_in_row = 0
                return n
            if time.perf_counter() >= end:
                break
            os.sched_yield()
        self.misses += 1
        self._missed_in_row += 1
        if self._missed_in_row >= MISSES:
            self._missed_in_row = 0
            self._skip_left = BACKOFF
        return None
