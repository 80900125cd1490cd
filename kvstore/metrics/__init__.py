"""kvstore.metrics: the Prometheus exporter of a daemon (store gauges, request histograms).

Public surface: ``metrics_service`` (the daemon's service factory).
"""

from kvstore.metrics.service import metrics_service

__all__ = ["metrics_service"]
