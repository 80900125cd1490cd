"""Keep other processes of the daemon's own uid out of its memory and descriptors.

The daemon holds every tenant's arena (a memfd each) and every tenant's
token. On Linux, any process of the same uid may by default open
``/proc/<daemon pid>/fd/N`` (a second descriptor of a tenant's arena: all of
its blocks, read and write), read ``/proc/<pid>/mem`` or attach a debugger.
``prctl(PR_SET_DUMPABLE, 0)`` at start closes those doors: the kernel then
treats the daemon like a setuid process (``/proc/<pid>/*`` owned by root,
``ptrace_may_access`` refused without ``CAP_SYS_PTRACE``). What it costs: no
core dumps, and a debugger or ``py-spy`` of the same user needs root.
Root (or a process with ``CAP_SYS_PTRACE``) still gets in: the kernel lets
it, and nothing a process does to itself can stop that.

Elsewhere than Linux it is a no-op that says so (``False``), never an error.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    rc = libc.prctl(option, arg, 0, 0, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg}) failed: {os.strerror(err)}")
    return rc


def forbid_inspection() -> bool:
    """Make this process undumpable (True), or do nothing where there is no prctl (False)."""
    if not sys.platform.startswith("linux"):
        return False
    prctl(PR_SET_DUMPABLE, 0)
    return True


def dumpable() -> bool | None:
    """Whether this process may be inspected by its own uid (None: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return bool(prctl(PR_GET_DUMPABLE))
