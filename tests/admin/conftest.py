"""Fixtures of the admin tests: a real Daemon on a background thread, reached over gRPC."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from kvstore.admin import admin_pb2_grpc
from kvstore.daemon.config import DaemonConfig
from kvstore.daemon.daemon import Daemon
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore
from kvstore.transport.remote import RemoteStore
from tests.admin.helpers import policy_factory


class DaemonThread:
    """``Daemon(config, store).run()`` on its own event loop thread, stopped like SIGTERM."""

    def __init__(self, config: DaemonConfig, store=None):
        self.daemon = Daemon(config, store)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.daemon.run(lambda urls: self.ready.set()))
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def start(self, wait: bool = True) -> DaemonThread:
        self.thread.start()
        if wait:
            assert self.ready.wait(30), "daemon did not start"
            if self.error is not None:
                raise self.error
        return self

    def address(self, kind: str) -> str:
        return next(s.address for s in self.daemon.services if s.kind == kind)

    @property
    def url(self) -> str:
        return self.daemon.server.urls[0]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.daemon.request_stop()
            self.thread.join(30)
        assert not self.thread.is_alive(), "daemon did not stop"


def daemon_config(**kw) -> DaemonConfig:
    kw.setdefault("listen", ["tcp://127.0.0.1:0"])
    kw.setdefault("admin", "127.0.0.1:0")
    kw.setdefault("metrics", "127.0.0.1:0")
    kw.setdefault("cpu_bytes", "64MiB")
    kw.setdefault("ssd_bytes", 0)
    kw.setdefault("drain_timeout", 2.0)
    return DaemonConfig(**kw)


def small_store(cpu_bytes: int = 64 << 10) -> TieredStore:
    """128 blocks of 512 bytes: a few hundred puts make eviction pressure."""
    return TieredStore(StoreConfig(cpu_bytes=cpu_bytes, policy_factory=policy_factory))


SMALL = object()


@pytest.fixture
def running():
    """Start daemons with ``running(config=..., store=...)``; all are stopped at the end.

    ``store`` defaults to a ``small_store()``; ``store=None`` lets the daemon build its own.
    """
    started = []

    def start(config: DaemonConfig | None = None, store=SMALL, wait: bool = True) -> DaemonThread:
        d = DaemonThread(config or daemon_config(), small_store() if store is SMALL else store)
        started.append(d)
        return d.start(wait)

    yield start
    for d in reversed(started):
        d.stop()


@pytest.fixture
def daemon(running) -> DaemonThread:
    return running()


@pytest.fixture
def channel(daemon):
    with grpc.insecure_channel(daemon.address("admin")) as ch:
        yield ch


@pytest.fixture
def admin(channel):
    return admin_pb2_grpc.AdminStub(channel)


@pytest.fixture
def client(daemon):
    c = RemoteStore.connect(daemon.url, timeout=10.0, retry_interval=0.05, strict=True)
    yield c
    c.close()
