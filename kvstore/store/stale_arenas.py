"""Arena files that daemons of earlier versions left under /dev/shm.

Arenas are now anonymous memory files (``kvstore.store.tenant_arenas``) that
die with their daemon. Earlier daemons kept their arena in a file named
``kvstore-<pid>-<random>``, which a SIGKILL left behind; ``sweep_stale``
removes such files whose owning pid no longer exists (the daemon calls it on
start).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PREFIX = "kvstore-"
_NAME = re.compile(r"^kvstore-(\d+)-[0-9a-f]+$")


def sweep_stale(directory: str = "/dev/shm") -> list[str]:
    """Remove arena files left by processes that no longer exist; returns their paths."""
    removed = []
    for entry in Path(directory).glob(f"{PREFIX}*"):
        match = _NAME.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
            removed.append(str(entry))
        except PermissionError:
            pass
    return removed
