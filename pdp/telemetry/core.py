"""Telemetry on: OpenTelemetry SDK tracer + meter providers of our own (never the global
ones, so several instances can coexist in one process, e.g. in tests), exported over
OTLP/gRPC and/or served to Prometheus from a private registry."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import structlog
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pdp.telemetry.base import Attributes, CacheStatsFn, IntFn, LaneStatsFn, NotifyStatsFn
from pdp.telemetry.noop import _NULL_SPAN
from pdp.telemetry.settings import TelemetrySettings

log = structlog.get_logger("pdp.telemetry")

# Decision latency buckets in seconds: the budget is 50 ms, our own time well under 1 ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

# Event-loop lag buckets in seconds: a healthy loop is late by well under a millisecond;
# anything past the 50 ms decision budget means calls are waiting for the loop.
LAG_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

# Instrument names (OTel). Prometheus sees them with dots as underscores, a unit suffix and
# ``_total`` on counters, e.g. ``pdp_decisions_total``, ``pdp_decision_duration_seconds``.
M_DECISIONS = "pdp.decisions"
M_DURATION = "pdp.decision.duration"
M_DEADLINE = "pdp.deadline_exceeded"
M_COUNTER_ERRORS = "pdp.counter_store.errors"
M_CACHE_RATIO = "pdp.cel.cache.hit_ratio"
M_CACHE_LOOKUPS = "pdp.cel.cache.lookups"
M_AUDIT_QUEUE = "pdp.audit.queue_depth"
M_AUDIT_SPOOLED = "pdp.audit.spooled_events"
M_NOTIFY = "pdp.notifications"
M_NOTIFY_BACKLOG = "pdp.notifications.backlog"
# The notifier's counts carry its backlog (a level, not a count) under this result name.
NOTIFY_BACKLOG = "backlog"
M_LOOP_LAG = "pdp.event_loop.lag"
M_SHADOW_SKIPPED = "pdp.shadow.skipped"
M_LANE_WAITS = "pdp.server.bulk_lane.waits"

SPAN_POLICY = "pdp.policy"
SPAN_COUNTERS = "pdp.counters.reserve"


class Telemetry:
    """The enabled implementation of :class:`~pdp.telemetry.base.DecisionTelemetry`.

    Build it, register the observable sources (``observe_*``, any time), :meth:`start` it
    once, :meth:`shutdown` at exit (flushes spans and metrics). Recording before
    :meth:`start` is a no-op-equivalent (instruments exist from construction; nothing is
    exported until the readers exist).
    """

    def __init__(self, settings: TelemetrySettings, registry: Any = None) -> None:
        """``registry``: a ``prometheus_client.CollectorRegistry`` the metrics are exposed
        in (the server's, served on its probe address, see :mod:`pdp.telemetry.registry`);
        None: a private one, only when ``prometheus_port`` is set."""
        self.settings = settings
        self._shared_registry = registry
        self._policy_spans = settings.policy_spans
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._propagator = TraceContextTextMapPropagator()
        self._cache_fns: list[CacheStatsFn] = []
        self._audit_fns: list[tuple[IntFn, IntFn]] = []
        self._notify_fns: list[NotifyStatsFn] = []
        self._lane_fns: list[LaneStatsFn] = []
        self._prom_server: Any = None
        self._prom_thread: threading.Thread | None = None
        self.prometheus_port: int | None = None
        """The bound scrape port once started (useful with ``prometheus_port=0``)."""
        self.registry: Any = None
        """The private ``prometheus_client.CollectorRegistry`` (None without Prometheus)."""

        self.resource = Resource.create({
            "service.name": settings.service_name,
            "service.instance.id": settings.service_instance_id
            or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        })
        sampler = (ALWAYS_ON if settings.sample_ratio >= 1.0
                   else TraceIdRatioBased(settings.sample_ratio))
        self.tracer_provider = TracerProvider(resource=self.resource,
                                              sampler=ParentBased(sampler))
        self._tracer = self.tracer_provider.get_tracer("pdp")
        # Readers must be known when the MeterProvider is built, so it is built in start();
        # until then instruments come from a reader-less provider (records go nowhere).
        self.meter_provider = MeterProvider(resource=self.resource)
        self._make_instruments()

    # -- lifecycle -------------------------------------------------------------------------

    enabled = True  # a plain attribute: ``if tel.enabled`` is the cheapest possible test

    def start(self) -> None:
        """Create exporters, the scrape endpoint and the metric readers. Idempotent."""
        with self._lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("telemetry was shut down")
            s = self.settings
            readers: list[MetricReader] = []
            if s.otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter,
                )
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )

                insecure = (s.otlp_insecure if s.otlp_insecure is not None
                            else s.otlp_endpoint.startswith("http://"))
                headers = dict(s.otlp_headers) or None
                span_exporter = OTLPSpanExporter(
                    endpoint=s.otlp_endpoint, insecure=insecure, headers=headers,
                    timeout=s.otlp_timeout_s)
                self.tracer_provider.add_span_processor(BatchSpanProcessor(
                    span_exporter, schedule_delay_millis=s.span_export_delay_s * 1000))
                readers.append(PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=s.otlp_endpoint, insecure=insecure,
                                       headers=headers, timeout=s.otlp_timeout_s),
                    export_interval_millis=s.metric_export_interval_s * 1000))
            if s.prometheus_port is not None or self._shared_registry is not None:
                from opentelemetry.exporter.prometheus import PrometheusMetricReader
                from prometheus_client import CollectorRegistry, start_http_server

                self.registry = (self._shared_registry if self._shared_registry is not None
                                 else CollectorRegistry(auto_describe=True))
                readers.append(PrometheusMetricReader(registry=self.registry))
                if s.prometheus_port is not None:
                    server, thread = start_http_server(
                        s.prometheus_port, addr=s.prometheus_host, registry=self.registry)
                    self._prom_server, self._prom_thread = server, thread
                    self.prometheus_port = int(server.server_port)
            old = self.meter_provider
            self.meter_provider = MeterProvider(resource=self.resource, metric_readers=readers)
            old.shutdown()
            self._make_instruments()
            self._started = True
            log.info("telemetry started", otlp=s.otlp_endpoint,
                     prometheus_port=self.prometheus_port)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export buffered spans and metrics now (tests, and before a planned exit)."""
        ms = int(timeout_s * 1000)
        ok_t = self.tracer_provider.force_flush(ms)
        ok_m = self.meter_provider.force_flush(ms)
        return bool(ok_t and ok_m)

    def shutdown(self) -> None:
        """Flush and stop exporters and the scrape endpoint. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for step in (self.tracer_provider.shutdown, self.meter_provider.shutdown,
                     self._stop_prometheus):
            try:
                step()
            except Exception:
                log.warning("telemetry shutdown step failed", step=getattr(step, "__name__", ""),
                            exc_info=True)

    def _stop_prometheus(self) -> None:
        if self._prom_server is not None:
            self._prom_server.shutdown()
            self._prom_server.server_close()
            if self._prom_thread is not None:
                self._prom_thread.join(timeout=5)
            self._prom_server = None

    # -- spans -----------------------------------------------------------------------------

    def decision_span(
        self, name: str, carrier: Mapping[str, str], attributes: Attributes | None = None
    ) -> AbstractContextManager[Span]:
        # With no traceparent the span joins whatever is current (e.g. an interceptor's).
        ctx = self._propagator.extract(carrier) if "traceparent" in carrier else None
        return self._tracer.start_as_current_span(
            name, context=ctx, kind=SpanKind.SERVER, attributes=attributes)

    def policy_span(self, policy_name: str) -> AbstractContextManager[Span]:
        if not self._policy_spans:
            return _NULL_SPAN
        return self._tracer.start_as_current_span(
            SPAN_POLICY, attributes={"pdp.policy": policy_name})

    def counter_span(self) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(SPAN_COUNTERS)

    # -- metrics ---------------------------------------------------------------------------

    def _make_instruments(self) -> None:
        m = self.meter_provider.get_meter("pdp")
        self._decisions = m.create_counter(
            M_DECISIONS, unit="1", description="Decisions by outcome, tenant and checkpoint")
        self._duration = m.create_histogram(
            M_DURATION, unit="s", description="Decision latency (own time)",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S)
        self._deadline = m.create_counter(
            M_DEADLINE, unit="1", description="Decisions denied with DEADLINE_EXCEEDED")
        self._counter_errors = m.create_counter(
            M_COUNTER_ERRORS, unit="1", description="Counter-store calls that failed")
        self._shadow_skipped = m.create_counter(
            M_SHADOW_SKIPPED, unit="1",
            description="Decisions whose draft policies were not evaluated (backlog full)")
        self._loop_lag = m.create_histogram(
            M_LOOP_LAG, unit="s", description="How late the event loop ran a periodic timer",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS_S)
        m.create_observable_gauge(
            M_CACHE_RATIO, callbacks=[self._observe_cache_ratio], unit="1",
            description="Compiled-expression cache hit ratio since start")
        m.create_observable_counter(
            M_CACHE_LOOKUPS, callbacks=[self._observe_cache_lookups], unit="1",
            description="Compiled-expression cache lookups by result")
        m.create_observable_gauge(
            M_AUDIT_QUEUE, callbacks=[self._observe_audit_queue], unit="1",
            description="Audit events waiting in the in-memory queue")
        m.create_observable_gauge(
            M_AUDIT_SPOOLED, callbacks=[self._observe_audit_spooled], unit="1",
            description="Audit events spooled to disk, not yet forwarded")
        m.create_observable_counter(
            M_NOTIFY, callbacks=[self._observe_notify], unit="1",
            description="Violation notifications by channel and result")
        m.create_observable_gauge(
            M_NOTIFY_BACKLOG, callbacks=[self._observe_notify_backlog], unit="1",
            description="Violation notifications waiting for a retry, by channel")
        m.create_observable_counter(
            M_LANE_WAITS, callbacks=[self._observe_lane], unit="1",
            description="Large requests that waited for their turn in the bulk lane, by"
                        " result (turn: had it; timed_out: went on without it)")

    def _labels(self, tenant: str, checkpoint: str) -> dict[str, str]:
        if self.settings.tenant_label:
            return {"tenant": tenant, "checkpoint": checkpoint}
        return {"checkpoint": checkpoint}

    def record_decision(
        self, outcome: str, tenant: str, checkpoint: str, elapsed_s: float
    ) -> None:
        labels = self._labels(tenant, checkpoint)
        self._duration.record(elapsed_s, labels)
        labels["outcome"] = outcome
        self._decisions.add(1, labels)

    def record_deadline_exceeded(self, tenant: str, checkpoint: str) -> None:
        self._deadline.add(1, self._labels(tenant, checkpoint))

    def record_counter_error(self, tenant: str, code: str = "COUNTER_STORE_UNAVAILABLE") -> None:
        labels = {"code": code}
        if self.settings.tenant_label:
            labels["tenant"] = tenant
        self._counter_errors.add(1, labels)

    def record_loop_lag(self, lag_s: float) -> None:
        self._loop_lag.record(lag_s)

    def record_shadow_skipped(self, n: int) -> None:
        self._shadow_skipped.add(n)

    def observe_cache(self, fn: CacheStatsFn) -> None:
        self._cache_fns.append(fn)

    def observe_audit(self, queue_depth: IntFn, spooled: IntFn) -> None:
        self._audit_fns.append((queue_depth, spooled))

    def observe_notifications(self, fn: NotifyStatsFn) -> None:
        self._notify_fns.append(fn)

    def observe_lane(self, fn: LaneStatsFn) -> None:
        self._lane_fns.append(fn)

    # Observable callbacks run on exporter / scrape threads: a failing source is logged and
    # skipped, never allowed to break the whole collection.

    def _cache_totals(self) -> tuple[int, int] | None:
        return _sum_pairs(self._cache_fns, "cache")

    def _observe_cache_ratio(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._cache_totals()
        if totals is None:
            return []
        hits, misses = totals
        lookups = hits + misses
        return [Observation(hits / lookups if lookups else 0.0)]

    def _observe_cache_lookups(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._cache_totals()
        if totals is None:
            return []
        return [Observation(totals[0], {"result": "hit"}),
                Observation(totals[1], {"result": "miss"})]

    def _observe_int(self, index: int) -> Iterable[Observation]:
        if not self._audit_fns:
            return []
        total = 0
        for fns in self._audit_fns:
            try:
                total += int(fns[index]())
            except Exception:
                log.warning("audit stats callback failed", exc_info=True)
        return [Observation(total)]

    def _observe_audit_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_int(0)

    def _observe_audit_spooled(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_int(1)

    def _notify_totals(self) -> dict[tuple[str, str], int]:
        merged: dict[tuple[str, str], int] = {}
        for fn in self._notify_fns:
            try:
                for key, n in fn().items():
                    merged[key] = merged.get(key, 0) + n
            except Exception:
                log.warning("notification stats callback failed", exc_info=True)
        return merged

    def _observe_notify(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"channel": ch, "result": res})
                for (ch, res), n in sorted(self._notify_totals().items())
                if res != NOTIFY_BACKLOG]

    def _observe_lane(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = _sum_pairs(self._lane_fns, "lane")
        if totals is None:
            return []
        waited, timed_out = totals
        return [Observation(waited - timed_out, {"result": "turn"}),
                Observation(timed_out, {"result": "timed_out"})]

    def _observe_notify_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"channel": ch})
                for (ch, res), n in sorted(self._notify_totals().items())
                if res == NOTIFY_BACKLOG]


def _sum_pairs(fns: list[Callable[[], tuple[int, int]]], what: str) -> tuple[int, int] | None:
    """The sums of what ``fns`` report (None: nothing registered); a failing one is logged
    and skipped (they run on scrape threads)."""
    if not fns:
        return None
    a = b = 0
    for fn in fns:
        try:
            x, y = fn()
        except Exception:
            log.warning(f"{what} stats callback failed", exc_info=True)
            continue
        a += x
        b += y
    return a, b
