"""The daemon's Prometheus endpoint (``--metrics HOST:PORT``, loopback by default).

Its own ``CollectorRegistry`` (nothing from the process-wide default registry),
served by prometheus-client's HTTP server on a background thread. Two sources:

* ``RequestMetrics`` (``metrics_transport``): the transport dispatcher's
  observer, counters and latency histograms updated once per request;
* ``StoreCollector`` (``metrics_store``): tier capacity/usage/hits/misses/
  evictions/demotions/promotions, namespaces, pins, open connections and the
  daemon's state, read at scrape time.

Importing this module registers ``metrics_service`` with the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from kvstore.errors import InvalidArgument
from kvstore.metrics.request_metrics import RequestMetrics
from kvstore.metrics.store_collector import StoreCollector

log = logging.getLogger("kvstore.metrics")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # scrapes are not log lines
        pass


def serve_registry(host: str, port: int, registry: CollectorRegistry) -> ThreadingWSGIServer:
    """Serve ``/metrics`` of ``registry`` on HOST:PORT from a daemon thread.

    prometheus_client's ``start_http_server`` polls for shutdown every 0.5 s,
    so every daemon stop waited that long; this loop polls every 50 ms.
    """

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                     name="kvstore-metrics", daemon=True).start()
    return httpd


class MetricsService:
    kind = "metrics"

    def __init__(self, daemon, address: str):
        self.daemon = daemon
        self.requested = address
        self.address = ""  # HOST:PORT actually bound (port 0 picks a free one)
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics()
        self.registry.register(self.requests)
        self.registry.register(StoreCollector(daemon))
        self._httpd = None

    async def start(self) -> None:
        try:
            host, port = split_address(self.requested)
            self._httpd = serve_registry(host, port, self.registry)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot serve metrics on {self.requested}: {exc}") from None
        bound = self._httpd.server_address
        self.address = f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}"
        log.info("metrics on http://%s/metrics", self.address)

    def state_changed(self, state: str) -> None:
        server = self.daemon.server
        if state == "serving" and server is not None:
            server.dispatcher.observer = self.requests

    async def stop(self) -> None:
        server = self.daemon.server
        if server is not None and server.dispatcher.observer is self.requests:
            server.dispatcher.observer = None
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            await asyncio.get_running_loop().run_in_executor(None, httpd.shutdown)
            httpd.server_close()


def metrics_service(daemon) -> MetricsService | None:
    address = daemon.config.metrics
    return MetricsService(daemon, address) if address else None

