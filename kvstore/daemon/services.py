"""The services a daemon runs beside its listeners: admin gRPC, metrics, cluster membership.

Each factory takes the running ``Daemon`` and returns None (not configured)
or a service (``async start()``, ``async stop()``, optional ``state_changed(state)``). The daemon package composes them
here, so the dependency runs one way: ``daemon`` imports ``admin``,
``metrics`` and ``cluster``; none of them imports the daemon.
"""

from __future__ import annotations

from kvstore.admin.service import admin_service
from kvstore.cluster.service import cluster_service
from kvstore.metrics.service import metrics_service

SERVICE_FACTORIES = (admin_service, metrics_service, cluster_service)
