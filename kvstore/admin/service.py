"""The daemon's gRPC admin server (``--admin HOST:PORT``, loopback by default).

One ``grpc.server`` with three services:

* ``kvstore.admin.v1.Admin`` (``admin_servicer``; token-checked by
  ``admin_auth`` when ``--admin-token-file`` is set);
* ``grpc.health.v1.Health``: NOT_SERVING while the daemon starts (before the
  store and the listeners are up), while writes are drained and during
  shutdown; SERVING otherwise. Both the overall status ("") and the Admin
  service's are set (writes drained: the store is read-only, ``Drain``);
* server reflection, so ``grpcurl`` can list and call without the proto.

Importing this module registers ``admin_service`` with the daemon.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore.admin import admin_pb2 as pb
from kvstore.admin import admin_pb2_grpc as pb_grpc
from kvstore.admin.auth import TokenInterceptor, read_token
from kvstore.admin.servicer import AdminServicer
from kvstore.errors import InvalidArgument
from kvstore.store_api import ManagedStore

log = logging.getLogger("kvstore.admin")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminService:
    kind = "admin"

    def __init__(self, daemon, address: str, token: str | None = None, threads: int = 4):
        self.daemon = daemon
        self.requested = address
        self.address = ""  # HOST:PORT actually bound (port 0 picks a free one)
        interceptors = [TokenInterceptor(token)] if token else []
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kvstore-admin"),
            interceptors=interceptors,
            options=[("grpc.so_reuseport", 0)],  # a second daemon must not share the port
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        pb_grpc.add_AdminServicer_to_server(AdminServicer(daemon, self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.set_serving(False)
        host = address.rpartition(":")[0]
        if not token and not is_loopback(host):
            log.warning("admin API on %s without --admin-token-file: anyone who reaches it "
                        "may evict, drain or stop the daemon", address)

    def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def state_changed(self, state: str) -> None:
        store: ManagedStore | None = self.daemon.store
        read_only = store is not None and store.read_only
        self.set_serving(state == "serving" and not read_only)

    async def start(self) -> None:
        try:
            port = self.server.add_insecure_port(self.requested)
        except RuntimeError as exc:
            raise InvalidArgument(f"cannot listen on admin address {self.requested}: {exc}") from None
        if port == 0:
            raise InvalidArgument(f"cannot listen on admin address {self.requested}")
        self.address = f"{self.requested.rpartition(':')[0]}:{port}"
        self.server.start()
        log.info("admin API on %s (grpc; health, reflection)", self.address)

    async def stop(self) -> None:
        self.health.enter_graceful_shutdown()
        done = self.server.stop(grace=1.0)
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 5.0)


def admin_service(daemon) -> AdminService | None:
    config = daemon.config
    if not config.admin:
        return None
    token = read_token(config.admin_token_file) if config.admin_token_file else None
    return AdminService(daemon, config.admin, token)

