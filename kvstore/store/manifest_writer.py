"""ManifestWriter: the namespace manifest written by one thread, many registrations per write.

Every new namespace must be in the SSD tier's manifest before any of its
blocks is (a restart drops records of namespaces it does not know), and
``register`` returns only once it is. Rewriting and fsyncing the whole
manifest once per registration made 1,024 registrations take minutes; here
``register`` asks for a write (``request``) and waits for it (``wait``), and
the writer thread saves the latest manifest once for every registration
that asked meanwhile (a group commit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kvstore.errors import StorageError

log = logging.getLogger("kvstore.store")


class ManifestWriter:
    def __init__(self, snapshot: Callable[[], dict], save: Callable[[dict], None]):
        self._snapshot = snapshot  # the manifest now (takes the store lock itself)
        self._save = save
        self._cond = threading.Condition()
        self._wanted = 0
        self._done = 0
        self._closed = False
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="kvstore-manifest", daemon=True)
        self._thread.start()

    def request(self) -> int:
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()
            return self._wanted

    def wait(self, ticket: int, timeout: float | None = 60.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= ticket or self._closed, timeout)

    def save_now(self) -> None:
        self.wait(self.request())

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted > self._done or self._closed)
                if self._wanted <= self._done and self._closed:
                    return
                target = self._wanted
            try:
                self._save(self._snapshot())
                self.writes += 1
            except (StorageError, OSError) as exc:
                log.error("cannot save the namespace manifest: %s", exc)
            except Exception:  # pragma: no cover - the writer must not die
                log.exception("saving the namespace manifest failed")
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
