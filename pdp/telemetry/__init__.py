"""Observability: OpenTelemetry spans and metrics for the decision path, OTLP/gRPC and
Prometheus exporters, and trace ids on log lines.

No gRPC imports here: incoming metadata reaches us as a plain ``Mapping[str, str]``.

Seams (how the server / engine wire it in)
------------------------------------------
Build once at start-up, share everywhere::

    tel = create_telemetry(TelemetrySettings(enabled=True, otlp_endpoint="http://collector:4317",
                                             prometheus_port=9464))
    tel.observe_cache(lambda: (cache.hits, cache.misses))           # CEL compiled-program cache
    tel.observe_audit(lambda: audit.queue_depth, lambda: audit.spooled_count)
    tel.observe_notifications(notifier.counts)                      # pdp.notify
    tel.start()             # exporters + scrape endpoint; tel.shutdown() at exit

``create_telemetry`` returns :class:`NoTelemetry` when ``enabled`` is False: same methods,
all no-ops, span managers are one shared ``nullcontext`` (see ``bench/telemetry_bench.py``).
Type the field as :class:`DecisionTelemetry`.

Per decision (engine / servicer)::

    carrier = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    attrs = {"pdp.tenant": tenant, "pdp.checkpoint": checkpoint}
    with tel.decision_span("pdp.CheckPush", carrier, attrs) as span:
        for policy in selected:
            with tel.policy_span(policy.name):
                ...
        with tel.counter_span():
            try: await store.reserve(...)
            except CounterStoreUnavailable: tel.record_counter_error(tenant); raise
        span.set_attribute("pdp.outcome", "deny")
    tel.record_decision("deny", tenant, checkpoint, elapsed_s)
    if deadline_exceeded: tel.record_deadline_exceeded(tenant, checkpoint)

Cost (``python bench/telemetry_bench.py``, this 2-core box): a NoTelemetry call site costs
~0.25-0.35 us (a method call + a ``with`` on the shared nullcontext), i.e. ~1 us for a
decision with 3 policies, ~3.5 us with 10. To make it zero in the per-policy loop, test
the plain attribute ``tel.enabled`` once per decision and use an uninstrumented loop when
it is False. Enabled, each recorded span costs ~10-20 us in the OpenTelemetry Python SDK:
use ``policy_spans=False`` (one span per decision + counter span) and/or ``sample_ratio``
when decisions evaluate many policies.

The span context is taken from the W3C ``traceparent`` (and ``tracestate``) entries of the
carrier; without them the span joins the current context (or starts a new trace).

A step (``CheckPushBatch``, each message of ``CheckPushStream``) is one ``decision_span``
named ``pdp.push_step`` with ``pdp.step.size`` / ``pdp.step.allowed`` / ``pdp.step.denied``;
:func:`log_step` writes its log lines inside it (info: one per deny and one for the step;
debug: one per allow).

Logs: add :func:`add_trace_ids` to the structlog processors (after ``merge_contextvars``,
before the renderer) in ``pdp/logging.py``; every event logged inside a decision span then
carries ``trace_id`` and ``span_id`` next to the bound ``decision_id``.

Metric names (Prometheus form): ``pdp_decisions_total{outcome,tenant,checkpoint}``,
``pdp_decision_duration_seconds_*{tenant,checkpoint}``,
``pdp_deadline_exceeded_total{tenant,checkpoint}``, ``pdp_counter_store_errors_total{code,tenant}``,
``pdp_cel_cache_hit_ratio``, ``pdp_cel_cache_lookups_total{result}``, ``pdp_audit_queue_depth``,
``pdp_audit_spooled_events``, ``pdp_notifications_total{channel,result}``,
``pdp_notifications_backlog{channel}`` (the ``backlog`` entries of the notifier's counts),
``pdp_event_loop_lag_seconds_*`` (from :class:`LoopLagMonitor`, a task the server runs).

The server builds one Prometheus registry (:func:`new_registry`: process metrics, and the
per-RPC ``grpc_server_*`` of :class:`RpcMetrics`, recorded with telemetry on or off) and
passes it to :func:`create_telemetry`, so its ``/metrics`` (probe address, and
``prometheus_port``) serves the decision metrics above beside them.
"""

from prometheus_client import CollectorRegistry

from pdp.telemetry.base import DecisionTelemetry
from pdp.telemetry.core import Telemetry
from pdp.telemetry.lag import LoopLagMonitor
from pdp.telemetry.logs import (
    add_trace_ids,
    current_trace_id,
    debug_enabled,
    log_decision,
    log_step,
)
from pdp.telemetry.noop import NO_TELEMETRY, NoTelemetry
from pdp.telemetry.registry import RpcMetrics, new_registry
from pdp.telemetry.settings import TelemetrySettings


def create_telemetry(settings: TelemetrySettings,
                     registry: CollectorRegistry | None = None) -> Telemetry | NoTelemetry:
    """:class:`Telemetry` when ``settings.enabled``, else the shared :class:`NoTelemetry`.

    ``registry``: expose the metrics in this Prometheus registry (the server's one, see
    :func:`new_registry`). Does not start anything; call ``start()``.
    """
    if not settings.enabled:
        return NO_TELEMETRY
    return Telemetry(settings, registry)


__all__ = [
    "NO_TELEMETRY",
    "DecisionTelemetry",
    "LoopLagMonitor",
    "NoTelemetry",
    "RpcMetrics",
    "Telemetry",
    "TelemetrySettings",
    "add_trace_ids",
    "create_telemetry",
    "current_trace_id",
    "debug_enabled",
    "log_decision",
    "log_step",
    "new_registry",
]
