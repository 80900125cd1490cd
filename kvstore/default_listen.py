"""Where a plain ``kvstore serve`` listens: the default shm socket and tcp port.

Written once, here in the core, so the daemon's settings (``kvstore.daemon.config``)
and the client's warning about a daemon that never answered
(``kvstore.availability``) name the same places.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TCP_URL = "tcp://127.0.0.1:7801"


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/kvstore`` when that folder exists, else ``/tmp/kvstore-UID``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "kvstore"
    return Path(f"/tmp/kvstore-{os.getuid()}")


def default_shm_url() -> str:
    """The shm URL of a ``kvstore serve`` started with no settings, in this environment."""
    return f"shm://{runtime_dir() / 'kvstore.sock'}"


def default_listen() -> list[str]:
    """The listeners of a ``kvstore serve`` started with no settings: shm, then tcp."""
    return [default_shm_url(), DEFAULT_TCP_URL]
