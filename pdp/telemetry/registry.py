"""The one Prometheus registry a server exposes, and its per-RPC gRPC server metrics.

Why one registry: ``/metrics`` on the probe address (and on ``prometheus_port``) must show
the same series whatever asks, so the process metrics, the gRPC metrics below and — with
telemetry on — the OpenTelemetry decision metrics (:class:`~pdp.telemetry.Telemetry` given
this registry) are all registered here.

Why plain ``prometheus_client`` instruments for the RPCs, not OpenTelemetry: they must work
with telemetry off, and a labelled child's ``inc`` / ``observe`` costs about a microsecond.
The names and labels are the ones go-grpc-prometheus made common, so existing dashboards
and alerts work as they are::

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_handling_seconds_bucket{grpc_type,grpc_service,grpc_method,le}

No gRPC import here (this layer must not know gRPC): the server's interceptor passes the
full method name, the call type and the status code's name as strings.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)

# Whole-call latency of any RPC, decisions, admin calls and streams alike: from 1 ms (a
# decision is well under that) to minutes (an audit Watch stream).
RPC_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)

#: grpc_type label values, by (client streams, server streams).
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = (
    "unary", "client_stream", "server_stream", "bidi_stream")


def new_registry(process: bool = True) -> CollectorRegistry:
    """A private registry (never the global one: several servers may share a process in
    tests) with the process metrics (``process_*``: CPU, memory, file descriptors, start
    time) and the interpreter's (``python_info``, ``python_gc_*``)."""
    registry = CollectorRegistry(auto_describe=True)
    if process:
        # The default collectors are stateless readers of /proc and the interpreter: the
        # same instances may be registered in any number of registries.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return registry


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method or full


class RpcMetrics:
    """Count and time every call the server handles, per method and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter("grpc_server_started", "RPCs started on the server.",
                                labels, registry=registry)
        self._handled = Counter("grpc_server_handled",
                                "RPCs completed on the server, by status code.",
                                (*labels, "grpc_code"), registry=registry)
        self._seconds = Histogram("grpc_server_handling_seconds",
                                  "Time from the start of an RPC to its status, seconds.",
                                  labels, buckets=RPC_BUCKETS_S, registry=registry)
        # Looking up a labelled child takes a lock and a dict lookup: keep them.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, key: tuple[str, ...]) -> Any:
        cache_key = (metric._name, *key)
        child = self._children.get(cache_key)
        if child is None:
            child = self._children[cache_key] = metric.labels(*key)
        return child

    def started(self, method: str, grpc_type: str) -> None:
        self._child(self._started, (grpc_type, *split_method(method))).inc()

    def handled(self, method: str, grpc_type: str, code: str, elapsed_s: float) -> None:
        """One finished call: ``code`` is the status code's name (``OK``,
        ``INVALID_ARGUMENT``, ...)."""
        service, name = split_method(method)
        self._child(self._handled, (grpc_type, service, name, code)).inc()
        self._child(self._seconds, (grpc_type, service, name)).observe(elapsed_s)
