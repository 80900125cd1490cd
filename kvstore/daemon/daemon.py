"""The daemon behind ``kvstore serve``: one TieredStore, its carriers, a clean shutdown.

Life of a daemon::

    build the store (CPU arena, SSD tier: rebuilt from its segments)
    start the listeners (shm, tcp, ucx)      -> logs "kvstore ready: URL, URL ..."
    start the services (admin gRPC, metrics: see SERVICE_FACTORIES)
    ... serve until SIGTERM / SIGINT ...
    drain: stop accepting, finish in-flight requests (drain_timeout), close connections
    stop the services, flush the store (acknowledged blocks reach the SSD), close it

A SIGKILL skips all of that: what was flushed before it is on the SSD and
comes back on the next start; the arena file is swept by the next daemon.

Services (admin API, metrics exporter, cluster membership) are listed in
``kvstore.daemon.services.SERVICE_FACTORIES``; the daemon calls each
factory with the running ``Daemon``. A factory returns None (not configured)
or an object with ``async start()`` and ``async stop()``; it finds the
addresses in ``daemon.config.admin`` / ``daemon.config.metrics``, the store
in ``daemon.store`` and the transport counters in ``daemon.server.dispatcher``,
and may call ``daemon.request_stop()`` (a drain over the admin API).

Services start first, while ``daemon.state`` is ``"starting"`` and
``daemon.store`` / ``daemon.server`` are still None (so a health probe can
watch a long SSD rebuild); a service with a ``state_changed(state)`` method
is told each later state, on the daemon's loop: ``"serving"`` (store and
listeners up), ``"draining"`` (shutdown began), ``"stopping"`` (requests
done; services stop next) and ``"stopped"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from kvstore.daemon.config import DaemonConfig
from kvstore.daemon.hardening import forbid_inspection
from kvstore.daemon.services import SERVICE_FACTORIES
from kvstore.errors import InvalidArgument, KVStoreError, StorageError
from kvstore.sizes import format_size
from kvstore.store_api import ManagedStore
from kvstore.transport import loops
from kvstore.transport.auth import TokenAuth
from kvstore.transport.server import Server

log = logging.getLogger("kvstore.daemon")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_store(config: DaemonConfig) -> ManagedStore:
    from kvstore.store.stale_arenas import sweep_stale
    from kvstore.store.tiered_store import TieredStore

    for path in sweep_stale(config.arena_dir):
        log.info("removed stale arena %s", path)
    store_config = config.store_config()
    if store_config.ssd_enabled:
        os.makedirs(config.ssd_dir, mode=0o700, exist_ok=True)
        if os.stat(config.ssd_dir).st_uid == os.getuid():
            os.chmod(config.ssd_dir, 0o700)  # blocks hold prompts' KV: the daemon's user only
    store = TieredStore(store_config)
    # the default tenant's arena; with auth on, tenants have arenas of their own (sparse)
    if config.prefault and not config.auth_token_file:
        info = store.arena()
        t0 = time.monotonic()
        try:
            prefault_arena(info.path, info.size)
        except OSError as exc:
            store.close()
            raise StorageError(
                f"cannot allocate the {format_size(info.size)} arena in {config.arena_dir}: {exc}"
            ) from exc
        log.info("arena of %s allocated in %.2fs", format_size(info.size), time.monotonic() - t0)
    return store


def check_admin_guard(config: DaemonConfig, auth: bool) -> None:
    """With data-plane auth on, the admin API needs its own token (or ``admin_insecure``)."""
    if not auth or not config.admin or config.admin_token_file:
        return
    if not config.admin_insecure:
        raise InvalidArgument(
            "data-plane auth is on but the admin API has no token: set --admin-token-file "
            "(or turn the admin API off with --admin '', or accept an open admin API with "
            "--admin-insecure)")
    log.warning("admin API at %s runs WITHOUT a token although data-plane auth is on "
                "(--admin-insecure): anyone who reaches it can evict, pin, drain", config.admin)


def prefault_arena(path: str, size: int) -> None:
    """Allocate every page of the arena file now (``posix_fallocate``; tmpfs zero-fills).

    The first write to a tmpfs page otherwise allocates and zeroes it inside
    the request that touches it: measured here, a fresh arena takes puts at a
    quarter of the speed of a warm one. It also fails the start, instead of a
    later write (SIGBUS), when /dev/shm cannot hold the arena.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


class Daemon:
    def __init__(self, config: DaemonConfig, store: ManagedStore | None = None):
        self.config = config
        self.store = store
        self.server: Server | None = None
        self.services: list = []
        self.started_at = 0.0
        self.state = "starting"
        self._stop: asyncio.Event | None = None

    def request_stop(self) -> None:
        """Begin a graceful shutdown (thread-safe through the loop)."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self, ready: Callable[[list[str]], None] | None = None) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = self.config
        auth = TokenAuth.from_file(config.auth_token_file) if config.auth_token_file else None
        check_admin_guard(config, auth is not None)
        self.state = "starting"
        try:
            await self._start_services()
            if self.store is None:
                self.store = await self._loop.run_in_executor(None, build_store, config)
            if config.pin_budget is not None:  # a store given to the daemon follows its setting
                self.store.pin_budget_bytes = config.pin_budget
            self.server = Server(self.store, config.listen, limits=config.limits, auth=auth,
                                 shm_allow_uids=config.shm_allow_uids)
            await self.server.start()
        except BaseException:
            if self.server is not None:
                await self.server.drain(0)
            await self._stop_services()
            await self._close_store()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        self.started_at = time.time()
        settings = self.store.settings()
        ssd = (f"ssd {format_size(settings['ssd_bytes'])} at {settings['ssd_dir']}"
               if self.store.may_block else "ssd off")
        tiers = f"cpu {format_size(settings['cpu_bytes'])}, {ssd}, "
        line = (f"kvstore ready: {' '.join(self.server.urls)} "
                f"({tiers}auth {'on' if auth else 'off'}, pid {os.getpid()})")
        log.info(line)
        self._set_state("serving")
        if ready is not None:
            ready(self.server.urls)
        await self._stop.wait()
        self._set_state("draining")
        log.info("shutting down: draining requests (up to %.0fs)", config.drain_timeout)
        await self.server.drain(config.drain_timeout)
        self._set_state("stopping")
        await self._stop_services()
        await self._close_store()
        self._set_state("stopped")
        log.info("kvstore stopped")
        return 0

    async def _start_services(self) -> None:
        for factory in SERVICE_FACTORIES:
            service = factory(self)
            if service is not None:
                await service.start()
                self.services.append(service)

    async def _stop_services(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %r failed", service)

    def _set_state(self, state: str) -> None:
        self.state = state
        for service in self.services:
            hook = getattr(service, "state_changed", None)
            if hook is not None:
                try:
                    hook(state)
                except Exception:
                    log.exception("%r failed to take state %s", service, state)

    async def _close_store(self) -> None:
        if self.store is None:
            return

        def finish():
            try:
                self.store.flush()
            except Exception:
                log.exception("flush on shutdown failed")
            self.store.close()

        await self._loop.run_in_executor(None, finish)


def serve(config: DaemonConfig) -> int:
    setup_logging(config.log_level, config.log_format)
    for key, where in sorted(config.source.items()):
        log.debug("setting %s from %s", key, where)

    def ready(urls):
        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            sys.stderr.write(f"kvstore ready: {' '.join(urls)}\n")
            sys.stderr.flush()

    try:
        if forbid_inspection():  # before any arena or token exists in this process
            log.info("same-uid processes cannot open this daemon's /proc files (undumpable)")
        ucx = any(url.startswith("ucx://") for url in config.listen)
        return loops.run(Daemon(config).run(ready), ucx=ucx)  # uvloop where installed
    except (KVStoreError, OSError) as exc:  # a port taken, a bad token file, ...
        log.error("kvstore serve: cannot start: %s", exc)
        return 1
