"""The standard services on the admin server: grpc.health.v1 and server reflection."""

from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import kvstore.daemon.daemon
from kvstore.admin import admin_pb2 as pb
from kvstore.admin.admin_pb2_grpc import AdminStub
from tests.admin.conftest import daemon_config, small_store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ADMIN = "kvstore.admin.v1.Admin"


def check(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_not_serving_while_the_store_is_built(running, monkeypatch):
    release = threading.Event()

    def slow_build(config):  # the SSD rebuild of a big cache, say
        assert release.wait(30)
        return small_store()

    monkeypatch.setattr(kvstore.daemon.daemon, "build_store", slow_build)
    daemon = running(daemon_config(), store=None, wait=False)
    wait_for(lambda: any(getattr(s, "address", "") for s in daemon.daemon.services))
    with grpc.insecure_channel(daemon.address("admin")) as ch:
        assert check(ch) == NOT_SERVING and check(ch, ADMIN) == NOT_SERVING
        try:
            AdminStub(ch).GetStats(pb.GetStatsRequest(), timeout=5)
            raise AssertionError("GetStats answered while starting")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and "starting" in exc.details()
        release.set()
        assert daemon.ready.wait(20)
        assert check(ch) == SERVING and check(ch, ADMIN) == SERVING


def test_not_serving_while_drained(daemon, admin, channel):
    assert check(channel) == SERVING
    admin.Drain(pb.DrainRequest())
    assert check(channel) == NOT_SERVING and check(channel, ADMIN) == NOT_SERVING
    admin.Drain(pb.DrainRequest(resume=True))
    assert check(channel) == SERVING


def test_not_serving_once_shutdown_begins(daemon, channel):
    seen: list[int] = []
    first = threading.Event()

    def watch():
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20):
                seen.append(reply.status)
                first.set()
        except grpc.RpcError:
            pass  # the server went away

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first.wait(5)
    daemon.stop()
    watcher.join(20)
    assert seen[0] == SERVING and NOT_SERVING in seen[1:]


def test_unknown_health_service(channel):
    try:
        check(channel, "no.such.Service")
        raise AssertionError("unknown service answered")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=ADMIN),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {ADMIN, "grpc.health.v1.Health"} <= names
    from google.protobuf import descriptor_pb2

    files = described.file_descriptor_response.file_descriptor_proto
    protos = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in files]
    admin_file = next(p for p in protos if p.package == "kvstore.admin.v1")
    (service,) = admin_file.service
    assert "Pin" in {m.name for m in service.method}
