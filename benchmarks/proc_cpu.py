"""A process's CPU time from /proc, and its share of one core over a window.

``/proc/PID/stat`` fields 14 and 15 (utime, stime) count every thread of
the process in clock ticks; a share of 1.0 is one core busy for the whole
window. CPU time, not wall-clock speed: a loaded machine slows a process
down but does not make an idle one look busy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) * TICK_S


@dataclass
class CpuWindow:
    """CPU used by ``pid`` between ``start()`` and ``share()``."""

    pid: int
    cpu0: float = 0.0
    wall0: float = 0.0

    def start(self) -> CpuWindow:
        self.cpu0, self.wall0 = cpu_seconds(self.pid), time.monotonic()
        return self

    def share(self) -> float:
        """Cores used on average since ``start`` (0.05: 5 % of one core)."""
        wall = time.monotonic() - self.wall0
        return (cpu_seconds(self.pid) - self.cpu0) / wall if wall > 0 else 0.0


def cpu_share(pid: int, seconds: float) -> float:
    """Share of a core ``pid`` uses over the next ``seconds`` (this call sleeps)."""
    window = CpuWindow(pid).start()
    time.sleep(seconds)
    return window.share()
