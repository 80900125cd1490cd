"""kvstore.admin: the gRPC admin API (``kvstore.admin.v1``), its client and CLI.

Public surface: ``AdminClient`` / ``AdminError`` (call the API), and
``admin_service`` (the daemon's service factory). ``admin.proto`` is the
contract; ``admin_pb2*.py`` are generated from it by ``scripts/admin_codegen.py``.
"""

from kvstore.admin.client import AdminClient, AdminError
from kvstore.admin.service import admin_service

__all__ = ["AdminClient", "AdminError", "admin_service"]
