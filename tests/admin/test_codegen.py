"""The checked-in admin_pb2*.py are what grpcio-tools makes of kvstore/admin/admin.proto today."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "admin_codegen.py"


def _codegen():
    spec = importlib.util.spec_from_file_location("admin_codegen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    admin_codegen = _codegen()
    version = importlib.metadata.version("grpcio-tools")
    if version != admin_codegen.GRPCIO_TOOLS_VERSION:
        pytest.skip(f"grpcio-tools {version} is not the pinned {admin_codegen.GRPCIO_TOOLS_VERSION}")
    for fresh in admin_codegen.generate(tmp_path):
        checked_in = admin_codegen.PACKAGE_DIR / fresh.name
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in.name} is stale: run python scripts/admin_codegen.py"
        )


def test_generated_code_imports_and_names_the_service():
    from kvstore.admin import admin_pb2, admin_pb2_grpc

    service = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert service.full_name == "kvstore.admin.v1.Admin"
    assert {m.name for m in service.methods} == {
        "GetStats", "ListNamespaces", "Evict", "Flush", "Pin", "Unpin",
        "SetEvictionPolicy", "Drain", "GetConfig", "GetCluster", "SetQuota",
    }
    assert hasattr(admin_pb2_grpc, "AdminStub")
