"""Host memory registered with the CUDA driver (page-locked), so device copies are DMA.

The CPU arenas (``kvstore.store.tenant_arenas``: the daemon's memory files, the embedded
store's, and a client's mapping of one, ``kvstore.transport.shm_client``) are
plain shared memory: a device copy from it is staged by the driver through a
bounce buffer and blocks the host. Registered with ``cudaHostRegister`` it is
pinned: ``copy_(non_blocking=True)`` between it and a CUDA tensor is one DMA,
asynchronous on its stream.

Registration costs time (page-locking gigabytes) and is pointless without a
CUDA engine, so it happens only once one asks: each mapping *tracks* itself
here when it is made (``track``) and untracks before it is unmapped
(``untrack``); ``enable()`` (called by the client when it sees CUDA caches)
registers every tracked mapping and every later one. A registration the
driver refuses (no CUDA, a locked-memory limit) is logged once and the mapping
stays pageable: copies still work, synchronously.

The registrar is a seam (``set_registrar``): tests install a recording one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context of the process

Register = Callable[[int, int], None]
Unregister = Callable[[int], None]


def _cuda_register(addr: int, size: int) -> None:
    import torch

    rc = torch.cuda.cudart().cudaHostRegister(addr, size, CUDA_HOST_REGISTER_PORTABLE)
    code = getattr(rc, "value", rc)
    if code != 0:
        raise RuntimeError(f"cudaHostRegister returned {rc}")


def _cuda_unregister(addr: int) -> None:
    import torch

    torch.cuda.cudart().cudaHostUnregister(addr)


_lock = threading.Lock()
_enabled = False
_tracked: dict[int, tuple[int, int, bool]] = {}  # token -> (addr, size, registered)
_next = 1
_register: Register = _cuda_register
_unregister: Unregister = _cuda_unregister
_warned = False


def set_registrar(register: Register | None, unregister: Unregister | None) -> tuple:
    """Install ``register(addr, size)`` / ``unregister(addr)`` (None: CUDA's); return the
    previous pair."""
    global _register, _unregister
    with _lock:
        previous = (_register, _unregister)
        _register = register or _cuda_register
        _unregister = unregister or _cuda_unregister
    return previous


def _try_register(addr: int, size: int) -> bool:
    global _warned
    try:
        _register(addr, size)
    except Exception as exc:
        if not _warned:
            _warned = True
            log.warning("kvstore: cannot pin the arena for DMA (%s); device copies of it "
                        "stay pageable", exc)
        return False
    return True


def track(addr: int, size: int) -> int:
    """A mapping of ``size`` bytes at ``addr`` exists; registered now if enabled. Returns
    the token to ``untrack`` it with."""
    global _next
    with _lock:
        token, _next = _next, _next + 1
        done = _enabled and size > 0 and _try_register(addr, size)
        _tracked[token] = (addr, size, done)
        return token


def untrack(token: int) -> None:
    """The mapping is about to be unmapped: unregister it if it was registered."""
    with _lock:
        entry = _tracked.pop(token, None)
        if entry is not None and entry[2]:
            try:
                _unregister(entry[0])
            except Exception:  # pragma: no cover - driver gone at exit
                pass


def enable() -> int:
    """Register every tracked mapping (and every later one); returns how many are
    registered now. Idempotent."""
    global _enabled
    with _lock:
        _enabled = True
        for token, (addr, size, done) in list(_tracked.items()):
            if not done and size > 0:
                _tracked[token] = (addr, size, _try_register(addr, size))
        return sum(1 for _, _, done in _tracked.values() if done)


def enabled() -> bool:
    return _enabled


def registered(addr: int) -> bool:
    """Whether ``addr`` lies in a registered mapping."""
    with _lock:
        return any(done and a <= addr < a + size for a, size, done in _tracked.values())


def reset() -> None:
    """Unregister everything and disable (tests)."""
    global _enabled, _warned
    with _lock:
        for addr, _, done in _tracked.values():
            if done:
                try:
                    _unregister(addr)
                except Exception:  # pragma: no cover
                    pass
        _tracked.update({t: (a, s, False) for t, (a, s, _) in _tracked.items()})
        _enabled = False
        _warned = False
