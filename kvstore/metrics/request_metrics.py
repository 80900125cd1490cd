"""Per-request metrics of the transport: the dispatcher's ``observer`` (see ``dispatch``).

Counted once per request, never per byte: requests by carrier and op, request
latency by op (a histogram), payload bytes read from and written to clients by
carrier (frame headers excluded; blocks a shm client copies straight through
its arena leases never cross the socket and are not counted), and errors by
code (failure replies, refused frames and refused connections alike).

Every update runs on the daemon's event-loop thread, so the counts are plain
Python ints in dicts (a few look-ups and adds per request: about a quarter of
the cost of prometheus-client's locked ``Counter``/``Histogram`` children, as
measured on the dev machine); they are turned into
metric families only when Prometheus scrapes (``collect``, on the HTTP thread,
which copies each small list before reading it).
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

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
    """The observer (``request``/``refused``) and the collector of what it counted."""

    def __init__(self) -> None:
        self._per_op: dict[tuple[str, str], list] = {}  # -> [sum of seconds, bucket counts...]
        self._per_carrier: dict[str, list[int]] = {}  # -> [bytes read, bytes written]
        self._errors: dict[int, int] = {}
        self._stalled: dict[tuple[str, str], int] = {}  # (carrier, phase) -> connections

    # -- the observer protocol (event-loop thread) --------------------------------
    def request(self, carrier: str, req, outcome, seconds: float) -> None:
        """One request answered (``outcome`` None: the connection broke mid-request)."""
        key = (carrier, getattr(req.op, "value", "unknown"))
        op = self._per_op.get(key)
        if op is None:
            op = self._per_op[key] = [0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        op[0] += seconds
        op[1 + bisect_left(LATENCY_BUCKETS, seconds)] += 1
        io = self._per_carrier.get(carrier)
        if io is None:
            io = self._per_carrier[carrier] = [0, 0]
        if req.sizes:
            io[0] += sum(req.sizes)
        reply = outcome.reply if outcome is not None else None
        if reply is None:
            if outcome is None:
                self.refused(carrier, ErrorCode.UNAVAILABLE)
            return
        if reply.sizes:
            io[1] += sum(reply.sizes)
        if reply.status:
            self._errors[reply.status] = self._errors.get(reply.status, 0) + 1

    def stalled(self, carrier: str, phase: str) -> None:
        """A connection dropped for silence (no hello in time, a stalled header, pushed out)."""
        key = (carrier, phase)
        self._stalled[key] = self._stalled.get(key, 0) + 1

    def refused(self, carrier: str, code: int) -> None:
        """A frame or a connection refused before any op ran."""
        self._errors[code] = self._errors.get(code, 0) + 1

    # -- the collector (scrape thread) --------------------------------------------
    def collect(self):
        requests = CounterMetricFamily("kvstore_requests", "Requests answered, by carrier and op",
                                       labels=["carrier", "op"])
        by_op: dict[str, list] = {}
        for (carrier, op), values in list(self._per_op.items()):
            values = list(values)
            requests.add_metric([carrier, op], sum(values[1:]))
            total = by_op.setdefault(op, [0.0] + [0] * (len(values) - 1))
            for i, v in enumerate(values):
                total[i] += v
        latency = HistogramMetricFamily(
            "kvstore_request_seconds", "Time from a request's header to its reply, by op",
            labels=["op"],
        )
        for op, values in sorted(by_op.items()):
            buckets, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), values[1:]):
                running += count
                buckets.append((_le(bound), running))
            latency.add_metric([op], buckets, values[0])
        read = CounterMetricFamily("kvstore_transport_read_bytes",
                                   "Payload bytes received from clients, by carrier",
                                   labels=["carrier"])
        written = CounterMetricFamily("kvstore_transport_written_bytes",
                                      "Payload bytes sent to clients, by carrier",
                                      labels=["carrier"])
        for carrier, (nread, nwritten) in list(self._per_carrier.items()):
            read.add_metric([carrier], nread)
            written.add_metric([carrier], nwritten)
        errors = CounterMetricFamily("kvstore_errors", "Error replies and refusals, by error code",
                                     labels=["code"])
        for code, count in sorted(self._errors.items()):
            errors.add_metric([code_name(code)], count)
        stalled = CounterMetricFamily(
            "kvstore_stalled_connections",
            "Connections dropped for silence: no hello in time, a stalled header, or pushed "
            "out by newer connections before their hello", labels=["carrier", "phase"])
        for (carrier, phase), count in sorted(self._stalled.items()):
            stalled.add_metric([carrier, phase], count)
        return [requests, latency, read, written, errors, stalled]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
