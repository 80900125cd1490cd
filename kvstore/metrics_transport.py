"""Per-request metrics of the transport: the dispatcher's ``observer`` (see ``dispatch``).

Counted once per request, never per byte: requests by carrier and op, request
latency by op (a histogram), payload bytes read from and written to clients by
carrier (frame headers excluded; blocks a shm client copies straight through
its arena leases never cross the socket and are not counted), and errors by code (failure replies, refused
frames and refused connections alike). Label children are cached, so a request
costs a few dictionary look-ups and counter increments.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from kvstore.errors import ErrorCode

LATENCY_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0, 5.0,
)


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return str(code)


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "kvstore_requests", "Requests answered, by carrier and op", ["carrier", "op"],
            registry=registry,
        )
        self.latency = Histogram(
            "kvstore_request_seconds", "Time from a request's header to its reply, by op",
            ["op"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.read_bytes = Counter(
            "kvstore_transport_read_bytes", "Payload bytes received from clients, by carrier",
            ["carrier"], registry=registry,
        )
        self.written_bytes = Counter(
            "kvstore_transport_written_bytes", "Payload bytes sent to clients, by carrier",
            ["carrier"], registry=registry,
        )
        self.errors = Counter(
            "kvstore_errors", "Error replies and refusals, by error code", ["code"],
            registry=registry,
        )
        self._per_op: dict = {}
        self._per_carrier: dict = {}
        self._per_code: dict = {}

    def _op_children(self, carrier: str, op) -> tuple:
        key = (carrier, op)
        children = self._per_op.get(key)
        if children is None:
            name = getattr(op, "value", "unknown")
            children = (self.requests.labels(carrier, name), self.latency.labels(name))
            self._per_op[key] = children
        return children

    def _carrier_children(self, carrier: str) -> tuple:
        children = self._per_carrier.get(carrier)
        if children is None:
            children = (self.read_bytes.labels(carrier), self.written_bytes.labels(carrier))
            self._per_carrier[carrier] = children
        return children

    def _error(self, code: int) -> None:
        child = self._per_code.get(code)
        if child is None:
            child = self._per_code[code] = self.errors.labels(code_name(code))
        child.inc()

    # -- the observer protocol --------------------------------------------------
    def request(self, carrier: str, req, outcome, seconds: float) -> None:
        """One request answered (``outcome`` None: the connection broke mid-request)."""
        count, latency = self._op_children(carrier, req.op)
        count.inc()
        latency.observe(seconds)
        read, written = self._carrier_children(carrier)
        if req.sizes:
            read.inc(sum(req.sizes))
        reply = outcome.reply if outcome is not None else None
        if reply is None:
            if outcome is None:
                self._error(ErrorCode.UNAVAILABLE)
            return
        if reply.sizes:
            written.inc(sum(reply.sizes))
        if reply.status:
            self._error(reply.status)

    def refused(self, carrier: str, code: int) -> None:
        """A frame or a connection refused before any op ran."""
        self._error(code)
